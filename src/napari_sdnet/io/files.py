"""Safe file writes: one place for the checks and the atomic write every output goes through.

* :func:`check_destination` says, before any long work, whether a file can be written there
  (folder exists and is writable, the name is not a folder, an existing file is only replaced
  when asked and is itself writable).
* :func:`atomic_write` is a context manager giving a temporary path in the destination's
  folder; when the block succeeds the file is moved into place with ``os.replace`` (readers
  never see half a file) and given the permissions a new file of the user's would have
  (``0666 & ~umask``, e.g. 0644, not ``mkstemp``'s 0600). On any exception, Ctrl-C and SIGTERM
  included, the temporary file is removed.
* :func:`write_or_rescue` writes with a fallback: when the destination fails at the last
  moment (disk full, permissions changed during a long run), the result goes to
  :func:`rescue_folder` and the caller is told where, so hours of training are not lost.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_sdnet.errors import InputError, RescuedWrite

__all__ = [
    "RescuedWrite",
    "atomic_write",
    "atomic_write_text",
    "check_destination",
    "file_mode",
    "rescue_folder",
    "write_or_rescue",
]


def file_mode() -> int:
    """The mode of a new regular file under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _writable_folder(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _probe(folder: Path) -> str | None:
    """Create and remove a small file in ``folder``: None if that worked, else the reason
    (catches what permission bits do not show: read-only mounts, ACLs, a full disk)."""
    probe = folder / f".sdnet-probe-{uuid.uuid4().hex[:12]}"
    try:
        with open(probe, "xb") as handle:
            handle.write(b"0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def check_destination(
    path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "output"
) -> Path:
    """Raise :class:`InputError` unless a ``what`` file can be written to ``path`` now.

    Checked: the name is not a folder; an existing file is refused unless ``overwrite`` (and
    must then be writable itself); the folder exists and a file can really be created there
    (a small probe file is written and removed).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a {what} file name")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise InputError(f"{path}: file exists; refusing to overwrite (pass --overwrite)")
        if not os.access(path, os.W_OK):
            raise InputError(f"{path}: permission denied (the existing file is read-only)")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{path}: folder {folder} does not exist")
    if not _writable_folder(folder):
        raise InputError(f"{path}: permission denied (cannot create files in {folder})")
    reason = _probe(folder)
    if reason is not None:
        raise InputError(f"{path}: cannot write in {folder} ({reason})")
    return path


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.sdnet-tmp-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place when the block succeeds.

    The block writes the whole file to the yielded path (any writer that takes a file name).
    An existing ``path`` is refused (:class:`InputError`) unless ``overwrite``. OS errors of
    the final move propagate (callers turn them into messages, see :func:`write_or_rescue`);
    the temporary file never stays behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: file exists; refusing to overwrite (pass overwrite=True)")
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8, its line endings as they are) to ``path`` atomically;
    :class:`InputError` if it cannot."""
    path = Path(path)
    try:
        with atomic_write(path, overwrite=overwrite) as tmp:
            with open(tmp, "x", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def rescue_folder() -> Path:
    """Where results go when their destination fails: ``$SDNET_RESCUE_DIR``, else
    ``~/.cache/napari-sdnet/rescued``, else the system's temporary folder."""
    candidates = []
    if os.environ.get("SDNET_RESCUE_DIR"):
        candidates.append(Path(os.environ["SDNET_RESCUE_DIR"]))
    candidates.append(Path.home() / ".cache" / "napari-sdnet" / "rescued")
    candidates.append(Path(tempfile.gettempdir()) / "napari-sdnet-rescued")
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if _writable_folder(folder):
            return folder
    raise InputError("no writable folder to rescue the result to (set SDNET_RESCUE_DIR)")


def write_or_rescue(path: str | os.PathLike[str], write: Callable[[Path], None], **kw) -> Path:
    """``atomic_write`` of ``write(tmp_path)`` to ``path``; on an OS error, to the rescue folder.

    Returns the written path, or raises :class:`RescuedWrite` (saved elsewhere, the message
    names where) or :class:`InputError` (nothing could be saved anywhere). ``kw`` goes to
    :func:`atomic_write` (``overwrite``).
    """
    path = Path(path)
    try:
        with atomic_write(path, **kw) as tmp:
            write(tmp)
        return path
    except OSError as exc:
        reason = exc.strerror or str(exc)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base, dot, ext = path.name.partition(".")  # keeps double suffixes such as .nii.gz
    rescue = rescue_folder() / f"{base}-{stamp}-{uuid.uuid4().hex[:6]}{dot}{ext}"
    try:
        with atomic_write(rescue) as tmp:
            write(tmp)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot write ({reason}), nor to {rescue.parent} ({exc.strerror or exc})"
        ) from None
    raise RescuedWrite(path, rescue, reason)
