"""Dock widget "napari-sdnet help": the workflow, the colours and the rules, in the window.

Listed under Plugins > napari-sdnet (napari offers plugins no Help menu entry).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QTextBrowser, QVBoxLayout, QWidget

from napari_sdnet._napari._layers import COLOURS, STRUCTURES

WIDGET_NAME = "napari-sdnet help"


def help_html() -> str:
    """The help text (HTML)."""
    swatch = "<td><span style='background:{}'>&nbsp;&nbsp;&nbsp;&nbsp;</span> {}</td>"
    rows = "".join(
        f"<tr><td>{value} {name}</td>"
        + "".join(swatch.format(COLOURS[o][value], o) for o in ("predicted", "expert"))
        + "</tr>"
        for value, name in STRUCTURES.items()
    )
    return f"""
<h3>napari-sdnet: myocardium segmentation with SDNet</h3>
<ol>
<li><b>Open</b> a cine MR study: File &gt; Open (NIfTI, DICOM folder) or
File &gt; Open Sample &gt; napari-sdnet.</li>
<li><b>Segment</b> (Plugins &gt; napari-sdnet &gt; Segmentation): choose the image, the
model and the device, press Segment. Progress shows in the widget and in napari's activity
(bottom right). The result is <i>&lt;image&gt; segmentation</i> (1 RV cavity, 2 myocardium,
3 LV cavity; <i>&lt;image&gt; myocardium</i>, label 2, with a myocardium-only model).</li>
<li><b>Correct</b> the mask with napari's brush, fill or eraser (the label in the layer
controls: 1, 2 or 3). The fine-tuning widget
lists every slice that differs from the model's mask (click one to go there); the viewer says
when the slice shown is a corrected one.</li>
<li><b>Fine-tune</b> (Fine-tuning) on the corrected slices: the new model, <i>fine-tuned
N</i>, is then in use in every widget (Segment uses it) and can be saved. Undo puts back the
model and the mask it replaced, and says which.</li>
<li><b>Mix</b> anatomy and imaging factors (Latent mixer): the preview is drawn in the
widget; "show in viewer" also adds it as a layer.</li>
<li><b>Measure</b> volumes, EF and LV mass (Cardiac function).</li>
</ol>
<p>One job runs at a time in a window: while one runs, the other widgets' start buttons are
disabled and say why.</p>
<p><b>Label colours</b> (hover a label to read its structure):</p>
<table cellpadding='3'>{rows}</table>
<p>Files are saved beside your own file, or in your home folder (the bundled sample lives in
the installed package). Nothing is replaced without asking.</p>
<p>Full guide: docs/user_guide.md in the napari-sdnet source.</p>
"""


class HelpWidget(QWidget):
    """The help text in a dock."""

    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(help_html())
        self.browser.setToolTip("how to use napari-sdnet")
        layout.addWidget(self.browser)
