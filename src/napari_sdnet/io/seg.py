"""DICOM Segmentation (SEG) objects for masks made on a DICOM series (highdicom; no napari/Qt).

:func:`write_dicom_seg` writes one BINARY Segmentation that references the source series
(every frame names its source image), one segment per ACDC structure present in the mask, with
SNOMED CT codes:

=====  ===========  =========================================================
value  segment      segmented property type (category: Anatomical Structure)
=====  ===========  =========================================================
1      RV cavity    SCT 53085002 "Right ventricle"
2      Myocardium   SCT 49848007 "Left ventricle myocardium"
3      LV cavity    SCT 87878005 "Left ventricle"
=====  ===========  =========================================================

Cine series: highdicom (0.28) builds Segmentations over distinct plane positions only, so a
cine SEG is built phase by phase and the phases are joined into one object with a third
dimension, TemporalPositionIndex. The joined object carries no DimensionOrganizationType (an
optional attribute): highdicom labels a single-segment phase ``3D``, which no longer holds once
phases are joined, and ``3D_TEMPORAL`` would promise one complete, equally spaced volume of
frames per temporal position, which a SEG without its empty frames does not have. Every frame
still references its own source image (and the top-level SourceImageSequence and
ReferencedSeriesSequence list the source images of every phase), so readers that match frames
to source images (highdicom, dcmjs/OHIF, ...) place it on the right phase.

:func:`read_dicom_seg` reads such an object back onto the source series' ``(t, z, y, x)`` grid
as ACDC label values.
"""

from __future__ import annotations

import copy
import os
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.errors import InputError
from napari_sdnet.io.dicom import DicomSeriesInfo, _quiet_pydicom, source_headers, valid_date

__all__ = ["ACDC_SEGMENTS", "read_dicom_seg", "write_dicom_seg"]

#: ACDC label value -> (segment label, SNOMED CT code value, code meaning).
ACDC_SEGMENTS: dict[int, tuple[str, str, str]] = {
    1: ("RV cavity", "53085002", "Right ventricle"),
    2: ("Myocardium", "49848007", "Left ventricle myocardium"),
    3: ("LV cavity", "87878005", "Left ventricle"),
}
_CODE_TO_ACDC = {code: value for value, (_, code, _) in ACDC_SEGMENTS.items()}
_TEMPORAL_POSITION_INDEX = 0x00209128
_FRAME_CONTENT_SEQUENCE = 0x00209111


def _sanitised(headers: Sequence[Any], frame_of_reference: str) -> list[Any]:
    """Copies highdicom accepts: anonymised dates (``00000000``) blanked, one FrameOfReference."""
    out = []
    for ds in headers:
        ds = copy.deepcopy(ds)
        for element in ds:
            if element.VR == "DA" and element.value and not valid_date(element.value):
                element.value = ""
        ds.FrameOfReferenceUID = frame_of_reference
        out.append(ds)
    return out


def _descriptions(values: Sequence[int], algorithm_type: str, version: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-sdnet SDNet", family=codes.DCM.ArtificialIntelligence, version=version
    )
    out = []
    for number, value in enumerate(values, start=1):
        label, code, meaning = ACDC_SEGMENTS[value]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm if algorithm_type != "MANUAL" else None,
            )
        )
    return out


def _frames(seg: Any) -> np.ndarray:
    """The frames of a BINARY highdicom Segmentation as a ``(n, rows, cols)`` uint8 array."""
    n, rows, cols = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
    bits = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")
    return bits[: n * rows * cols].reshape(n, rows, cols)


def write_dicom_seg(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    info: DicomSeriesInfo,
    *,
    overwrite: bool = False,
    algorithm_type: str = "AUTOMATIC",
    content_label: str = "SDNET",
) -> Path:
    """Write ``labels`` (ACDC values 0-3 on the series grid, ``(t, z, y, x)`` or ``(z, y, x)``)
    as a DICOM Segmentation referencing the series ``info`` describes.

    Only structures present get a segment. ``algorithm_type`` is ``AUTOMATIC`` for a model's
    output, ``SEMIAUTOMATIC`` for a mask that may have been corrected by hand. Atomic (a
    temporary file in the same folder, then renamed); an existing file is refused unless
    ``overwrite``. Raises :class:`InputError` for a mask that does not fit the series, values
    other than 0-3, an empty mask, or moved source files.
    """
    with _quiet_pydicom():
        return _write_dicom_seg(path, labels, info, overwrite, algorithm_type, content_label)


def _write_dicom_seg(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    info: DicomSeriesInfo,
    overwrite: bool,
    algorithm_type: str,
    content_label: str,
) -> Path:
    import highdicom as hd

    from napari_sdnet import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: file exists; refusing to overwrite (pass overwrite=True)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    arr = np.asarray(labels)
    grid = (info.n_phases, info.n_slices)
    if arr.ndim == 3 and info.n_phases == 1:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[:2] != grid:
        raise InputError(
            f"{path}: the mask has shape {np.shape(labels)} but the DICOM series has "
            f"{info.n_phases} phase(s) x {info.n_slices} slice(s); it would not line up"
        )
    if arr.dtype.kind == "f":
        if not np.all(arr == np.rint(arr)):
            raise InputError(f"{path}: the mask holds non-integer values")
        arr = np.rint(arr)
    arr = arr.astype(np.int64, copy=False)
    present = sorted(int(v) for v in np.unique(arr) if v != 0)
    unknown = [v for v in present if v not in ACDC_SEGMENTS]
    if unknown:
        raise InputError(
            f"{path}: label value(s) {unknown} have no ACDC meaning (1 RV cavity, 2 myocardium, "
            "3 LV cavity); only those can be exported as DICOM SEG"
        )
    if not present:
        raise InputError(f"{path}: the mask is empty; a DICOM SEG needs at least one structure")
    segment_of = np.zeros(4, np.uint8)
    for number, value in enumerate(present, start=1):
        segment_of[value] = number

    headers = source_headers(info)
    if headers and (headers[0][0].Rows, headers[0][0].Columns) != arr.shape[-2:]:
        raise InputError(
            f"{path}: mask slices are {arr.shape[-2:]}, the DICOM images "
            f"{(headers[0][0].Rows, headers[0][0].Columns)}"
        )
    frames_of_reference = Counter(
        str(ds.get("FrameOfReferenceUID", "")) for row in headers for ds in row
    )
    frame_of_reference = frames_of_reference.most_common(1)[0][0] or hd.UID()
    if len(frames_of_reference) > 1:
        warnings.warn(
            f"{info.label()}: its images carry {len(frames_of_reference)} different "
            "FrameOfReferenceUIDs (an anonymiser?); the SEG uses the most common one",
            UserWarning,
            stacklevel=2,
        )

    series_uid, sop_uid = hd.UID(), hd.UID()
    descriptions = _descriptions(present, algorithm_type, __version__)
    phase_segs: list[tuple[int, Any]] = []
    for t in range(info.n_phases):
        phase = segment_of[arr[t]]
        if not phase.any():
            continue
        seg = hd.seg.Segmentation(
            source_images=_sanitised(headers[t], frame_of_reference),
            pixel_array=phase,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=9900,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="napari-sdnet",
            manufacturer_model_name="SDNet",
            software_versions=__version__,
            device_serial_number="0",
            content_label=content_label,
            content_description="ACDC structures (1 RV cavity, 2 myocardium, 3 LV cavity)",
            series_description="SDNet segmentation",
        )
        phase_segs.append((t, seg))
    out = _join_phases(phase_segs, info, headers) if info.n_phases > 1 else phase_segs[0][1]

    tmp = path.with_name(f".{path.name}.sdnet-tmp-{uuid.uuid4().hex[:12]}")
    try:
        out.save_as(str(tmp), enforce_file_format=True)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return path


def _join_phases(phase_segs: list[tuple[int, Any]], info: DicomSeriesInfo, headers) -> Any:
    """One Segmentation from per-phase ones, with a TemporalPositionIndex dimension."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence as DicomSequence

    base = copy.deepcopy(phase_segs[0][1])
    # slice index of a frame from its position (the same positions in every phase)
    centres = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers[0]])

    items: list[Any] = []
    pixels: list[np.ndarray] = []
    referenced: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for t, seg in phase_segs:
        frames = _frames(seg)
        for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            item = copy.deepcopy(item)
            pos = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            z = int(np.argmin(np.linalg.norm(centres - pos, axis=1)))
            content = item.FrameContentSequence[0]
            segment = int(content.DimensionIndexValues[0])
            content.TemporalPositionIndex = t + 1
            content.DimensionIndexValues = [segment, z + 1, t + 1]
            items.append(item)
            pixels.append(frames[k])
        for series_item in seg.ReferencedSeriesSequence:
            for ref in series_item.ReferencedInstanceSequence:
                referenced.setdefault(str(ref.ReferencedSOPInstanceUID), ref)
        for ref in seg.get("SourceImageSequence", []):
            sources.setdefault(str(ref.ReferencedSOPInstanceUID), ref)

    dimension = Dataset()
    dimension.DimensionOrganizationUID = base.DimensionIndexSequence[0].DimensionOrganizationUID
    dimension.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    dimension.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    dimension.DimensionDescriptionLabel = "Temporal Position Index"
    base.DimensionIndexSequence.append(dimension)
    # highdicom writes "3D" for a single-segment phase; the joined phases are not one 3D volume,
    # and "3D_TEMPORAL" needs every temporal position to hold a complete volume (empty frames
    # are omitted here), so the optional attribute is left out
    if "DimensionOrganizationType" in base:
        del base.DimensionOrganizationType
    base.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    base.NumberOfFrames = len(items)
    base.ReferencedSeriesSequence[0].ReferencedInstanceSequence = DicomSequence(
        list(referenced.values())
    )
    base.SourceImageSequence = DicomSequence(list(sources.values()))
    base.PixelData = pack_bits(np.stack(pixels).reshape(-1))
    return base


def read_dicom_seg(path: str | os.PathLike[str], info: DicomSeriesInfo) -> np.ndarray:
    """A DICOM SEG on the series ``info`` describes, as ACDC labels on its grid.

    Returns ``(t, z, y, x)`` uint8 (``(z, y, x)`` for a single-phase series). Segments are
    mapped to ACDC values by their segmented property type (the codes of
    :data:`ACDC_SEGMENTS`); other segments are refused.
    """
    with _quiet_pydicom():
        return _read_dicom_seg(Path(path), info)


def _read_dicom_seg(path: Path, info: DicomSeriesInfo) -> np.ndarray:
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM Segmentation ({exc})") from exc
    value_of: dict[int, int] = {}
    for number in seg.segment_numbers:
        desc = seg.get_segment_description(number)
        code = str(desc.segmented_property_type.value)
        if code not in _CODE_TO_ACDC:
            raise InputError(
                f"{path}: segment {number} ({desc.segment_label!r}, SCT {code}) is not an ACDC "
                "structure (RV cavity, myocardium, LV cavity)"
            )
        value_of[int(number)] = _CODE_TO_ACDC[code]
    lut = np.zeros(max(value_of, default=0) + 1, np.uint8)
    for number, value in value_of.items():
        lut[number] = value
    rows = int(seg.Rows), int(seg.Columns)
    out = np.zeros((info.n_phases, info.n_slices, *rows), np.uint8)
    uids_in_seg = {str(u[2]) for u in seg.get_source_image_uids()}
    for t, row in enumerate(info.sop_instance_uids):
        present = [u for u in row if u in uids_in_seg]
        if not present:
            continue
        # highdicom refuses source instances without frames; ask for those present only
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=present,
            combine_segments=True,
            skip_overlap_checks=True,
        )
        for uid, plane in zip(present, arr, strict=True):
            out[t, row.index(uid)] = lut[plane]
    return out if info.n_phases > 1 else out[0]
