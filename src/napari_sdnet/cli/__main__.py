"""``python -m napari_sdnet.cli``: the ``napari-sdnet`` command."""

import sys

from napari_sdnet.cli import main

sys.exit(main())
