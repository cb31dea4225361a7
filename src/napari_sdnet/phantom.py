"""Synthetic short-axis cine MR phantom with ground-truth labels.

The phantom exists for FAST TESTS of the data path (reading, preprocessing, training loops,
inverse geometry, writers, widgets). It is a cartoon: a network that segments it well proves
nothing about real cardiac MR, and it must never be used as evidence of segmentation quality.

What it models (all sizes in millimetres, so that different pixel spacings image the same heart):

* an LV blood pool (bright, with two darker papillary muscles that belong to the LV cavity label,
  as in ACDC) inside a dark-grey myocardial ring about 8-10 mm thick at end-diastole;
* a crescent RV cavity wrapped around the septum, with a thin RV free wall (not labelled, as in
  ACDC), and bright epicardial fat around the heart;
* surrounding tissue: a body outline with subcutaneous fat, soft tissue, two lungs (dark), the
  liver, the descending aorta (bright) and the spine;
* contraction over the cardiac cycle, ED (frame 0) -> ES (frame ``n_frames // 2``) -> ED: the
  LV cavity shrinks and the wall thickens (myocardial area is conserved), the RV contracts;
* base-to-apex shrinking along z: slice 0 is the base, the last slice is near the apex (the stack
  always spans base to apex, whatever the slice thickness);
* Rician-like magnitude noise, a smooth multiplicative coil bias field and, with
  ``contrast_jitter``, scanner-like changes between studies (tissue contrast, gain, gamma).

Labels follow ACDC: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity. Everything is
deterministic for a given ``seed``; only NumPy and SciPy are used (nibabel for writing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_sdnet.errors import InputError

__all__ = [
    "CinePhantom",
    "PhantomOptions",
    "PhantomVolume",
    "make_cine_phantom",
    "make_phantom_volume",
    "write_phantom_nifti",
]

#: Duration of one simulated heartbeat (ms); the time step is this over ``n_frames``.
CYCLE_MS = 800.0

# Baseline SSFP-like tissue intensities (blood = 1), before bias, noise and contrast changes.
_TISSUE = {
    "air": 0.0,
    "fat": 0.85,
    "soft": 0.42,
    "lung": 0.06,
    "liver": 0.38,
    "spine": 0.5,
    "aorta": 0.95,
    "epi_fat": 0.78,
    "rv_wall": 0.3,
    "rv_blood": 0.92,
    "myo": 0.28,
    "lv_blood": 1.0,
    "papillary": 0.33,
}


@dataclass
class CinePhantom:
    """A synthetic cine study in napari axis order.

    Attributes:
        image: float32 ``(t, z, y, x)``, non-negative magnitude intensities.
        labels: uint8 ``(t, z, y, x)`` with ACDC values (0 bg, 1 RV, 2 myocardium, 3 LV).
        spacing: per array axis ``(t step in ms, z, y, x in mm)``.
        affine: 4x4 voxel-to-world matrix for the NIfTI array ``(x, y, z)`` (mm).
        ed_frame: index of end-diastole (always 0).
        es_frame: index of end-systole (``n_frames // 2``).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float, float]
    affine: np.ndarray
    ed_frame: int = 0
    es_frame: int = 0


@dataclass
class PhantomVolume:
    """One 3D phantom volume: ``image``/``labels`` ``(z, y, x)``, ``spacing`` ``(z, y, x)`` mm."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


@dataclass
class _Study:
    """Per-study random parameters, drawn once from the seed."""

    lv_centre: tuple[float, float]  # (y, x) mm from the image centre
    r_endo_ed: float  # LV cavity radius at the base at ED (mm)
    wall_ed: float  # myocardial thickness at the base at ED (mm)
    ef_shrink: float  # fractional LV radius reduction ED -> ES
    ellipticity: float
    ellipse_angle: float
    rv_angle: float  # direction from LV to RV centre (radians, image plane)
    rv_size: float
    pap_angles: tuple[float, float]
    tissue: dict[str, float]
    gain: float
    gamma: float
    offset: float
    bias: np.ndarray  # coefficients of the smooth bias field


def _draw_study(rng: np.random.Generator, contrast_jitter: bool) -> _Study:
    tissue = dict(_TISSUE)
    if contrast_jitter:
        for key in tissue:
            if key != "air":
                tissue[key] *= float(rng.uniform(0.85, 1.15))
        gain = float(np.exp(rng.uniform(np.log(0.3), np.log(4.0))))
        gamma = float(rng.uniform(0.75, 1.35))
        offset = float(rng.uniform(0.0, 0.03))
    else:
        gain, gamma, offset = 1.0, 1.0, 0.0
    return _Study(
        lv_centre=(float(rng.uniform(-12.0, -4.0)), float(rng.uniform(4.0, 12.0))),
        r_endo_ed=float(rng.uniform(23.0, 27.0)),
        wall_ed=float(rng.uniform(8.5, 10.0)),
        ef_shrink=float(rng.uniform(0.3, 0.38)),
        ellipticity=float(rng.uniform(0.0, 0.06)),
        ellipse_angle=float(rng.uniform(0.0, np.pi)),
        rv_angle=float(np.pi + rng.uniform(-0.15, 0.45)),
        rv_size=float(rng.uniform(0.95, 1.1)),
        pap_angles=(float(rng.uniform(0.4, 0.9)), float(rng.uniform(-0.9, -0.4))),
        tissue=tissue,
        gain=gain,
        gamma=gamma,
        offset=offset,
        bias=rng.uniform(-0.22, 0.22, size=6),
    )


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ay: float, ax: float):
    return ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0


def _render_slice(
    st: _Study,
    yy: np.ndarray,
    xx: np.ndarray,
    contraction: float,
    level: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue intensities and labels of one slice.

    ``yy``/``xx`` are mm coordinates of the pixel centres, ``contraction`` 0 (ED) .. 1 (ES),
    ``level`` 0 (base) .. 1 (apex).
    """
    t = st.tissue
    img = np.full(yy.shape, t["air"], dtype=np.float64)
    lab = np.zeros(yy.shape, dtype=np.uint8)

    # Body, subcutaneous fat, soft tissue.
    body = _ellipse(yy, xx, 10.0, 0.0, 115.0, 155.0)
    inner = _ellipse(yy, xx, 10.0, 0.0, 106.0, 145.0)
    img[body] = t["fat"]
    img[inner] = t["soft"]
    # Lungs (the left lung, image right, is cut by the heart), liver, spine, aorta.
    img[_ellipse(yy, xx, -20.0, -62.0, 55.0, 32.0) & inner] = t["lung"]
    img[_ellipse(yy, xx, -5.0, 70.0, 60.0, 30.0) & inner] = t["lung"]
    liver_cy = 70.0 - 25.0 * level  # the liver rises into apical slices
    img[_ellipse(yy, xx, liver_cy, -45.0, 40.0, 60.0) & inner] = t["liver"]
    img[_ellipse(yy, xx, 78.0, 8.0, 18.0, 16.0)] = t["spine"]
    img[_ellipse(yy, xx, 50.0, 28.0, 11.0, 11.0)] = t["aorta"]

    # Left ventricle: shrinks towards the apex, contracts over the cycle, conserves wall area.
    size = float(np.sqrt(max(1.0 - 0.9 * level**2, 0.05)))
    r_endo_ed = st.r_endo_ed * size
    wall_ed = st.wall_ed * (0.8 + 0.2 * size)
    r_epi_ed = r_endo_ed + wall_ed
    r_endo = r_endo_ed * (1.0 - st.ef_shrink * contraction)
    r_epi = float(np.sqrt(r_endo**2 + r_epi_ed**2 - r_endo_ed**2))

    cy, cx = st.lv_centre
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    shape = 1.0 + st.ellipticity * np.cos(2.0 * (theta - st.ellipse_angle))
    endo = rho < r_endo * shape
    epi = rho < r_epi * shape

    # RV: an ellipse beside the LV, minus the LV; shortens towards the apex, contracts less.
    ux, uy = np.cos(st.rv_angle), np.sin(st.rv_angle)
    rv_scale = st.rv_size * (1.0 - 0.2 * contraction) * float(np.sqrt(max(1.0 - level**1.6, 0.0)))
    rv_cy = cy + uy * 0.7 * r_epi_ed
    rv_cx = cx + ux * 0.7 * r_epi_ed
    a_par = 0.95 * r_epi_ed * rv_scale  # along the LV -> RV direction
    a_perp = 1.3 * r_epi_ed * max(rv_scale, 0.3)
    py, px = yy - rv_cy, xx - rv_cx
    along = px * ux + py * uy
    across = -px * uy + py * ux
    if a_par > 1.0:
        rv_outer = (along / (a_par + 3.0)) ** 2 + (across / (a_perp + 3.0)) ** 2 <= 1.0
        rv_cav = ((along / a_par) ** 2 + (across / a_perp) ** 2 <= 1.0) & ~epi
    else:
        rv_outer = np.zeros(yy.shape, dtype=bool)
        rv_cav = rv_outer
    heart = epi | rv_outer

    # Epicardial fat: a few mm around the heart (drawn first, then covered by the heart).
    dist_out = ndimage.distance_transform_edt(~heart, sampling=_sampling(yy, xx))
    img[(dist_out > 0) & (dist_out <= 3.0)] = t["epi_fat"]

    img[rv_outer] = t["rv_wall"]
    img[rv_cav] = t["rv_blood"]
    lab[rv_cav] = 1
    img[epi] = t["myo"]
    lab[epi] = 2
    img[endo] = t["lv_blood"]
    lab[endo] = 3

    # Papillary muscles: dark blobs inside the cavity, labelled as LV cavity (ACDC convention).
    if r_endo > 9.0:
        rp = 2.6 * (1.0 + 0.3 * contraction)
        for ang in st.pap_angles:
            d = r_endo - 1.6 * rp
            pap = np.hypot(dy - d * np.sin(ang), dx - d * np.cos(ang)) < rp
            img[pap & endo] = t["papillary"]
    return img, lab


def _sampling(yy: np.ndarray, xx: np.ndarray) -> tuple[float, float]:
    sy = float(yy[1, 0] - yy[0, 0]) if yy.shape[0] > 1 else 1.0
    sx = float(xx[0, 1] - xx[0, 0]) if xx.shape[1] > 1 else 1.0
    return sy, sx


def _affine(spacing_zyx: tuple[float, float, float], shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Voxel-to-world affine for the NIfTI array (x, y, z), centred on the stack."""
    sz, sy, sx = spacing_zyx
    nz, ny, nx = shape_zyx
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz]
    return aff


def _check_args(
    n_slices: int, shape: tuple[int, int], spacing: tuple[float, float], slice_thickness: float
) -> tuple[float, float]:
    if n_slices < 1:
        raise InputError("n_slices must be at least 1")
    if len(shape) != 2 or min(shape) < 8:
        raise InputError("shape must be (H, W) with at least 8 pixels per side")
    sy, sx = (float(v) for v in spacing)
    if sy <= 0 or sx <= 0 or slice_thickness <= 0:
        raise InputError("spacing and slice_thickness must be positive")
    return sy, sx


@dataclass(frozen=True)
class PhantomOptions:
    """What a phantom study looks like (the keyword options of :func:`make_cine_phantom` and
    :func:`make_phantom_volume`).

    Attributes:
        n_slices: short-axis slices from base (0) to apex (last).
        shape: in-plane ``(H, W)`` pixels.
        spacing: in-plane ``(sy, sx)`` in mm; the anatomy is sized in mm.
        slice_thickness: z spacing in mm (recorded in ``spacing`` and ``affine``).
        seed: random seed; the same arguments give the same phantom.
        noise: Rician noise sigma relative to the blood intensity (0 disables noise).
        bias_field: apply a smooth multiplicative coil-sensitivity field.
        contrast_jitter: draw per-study tissue contrast, gain and gamma from the seed
            (otherwise blood is about 1 and air 0).
    """

    n_slices: int = 6
    shape: tuple[int, int] = (128, 128)
    spacing: tuple[float, float] = (1.5, 1.5)
    slice_thickness: float = 10.0
    seed: int = 0
    noise: float = 0.03
    bias_field: bool = True
    contrast_jitter: bool = True

    @classmethod
    def of(cls, options: dict[str, Any]) -> PhantomOptions:
        """The options from keyword arguments; an unknown name is an :class:`InputError`."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise InputError(f"unknown phantom option(s) {', '.join(unknown)}; known: {known}")
        return cls(**options)


def _render(
    contractions: list[float], options: PhantomOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one volume per contraction value; returns ``(image, labels, affine)``."""
    n_slices, shape, spacing = options.n_slices, options.shape, options.spacing
    slice_thickness, noise = options.slice_thickness, options.noise
    sy, sx = _check_args(n_slices, shape, spacing, slice_thickness)
    seed, bias_field, contrast_jitter = options.seed, options.bias_field, options.contrast_jitter
    rng = np.random.default_rng(seed)
    st = _draw_study(rng, contrast_jitter)
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.meshgrid(
        (np.arange(h) - (h - 1) / 2.0) * sy, (np.arange(w) - (w - 1) / 2.0) * sx, indexing="ij"
    )

    # Static per-study fields: fine tissue texture (per slice) and the bias field.
    texture = np.empty((n_slices, h, w))
    for z in range(n_slices):
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), (2.0 / sy, 2.0 / sx))
        field /= field.std() + 1e-12
        texture[z] = 1.0 + 0.04 * field
    if bias_field:
        b = st.bias
        yn, xn = yy / 100.0, xx / 100.0
        zn = np.linspace(-0.5, 0.5, n_slices) if n_slices > 1 else np.zeros(1)
        plane = b[0] * yn + b[1] * xn + b[2] * yn * xn + b[3] * (yn**2 - xn**2)
        plane = plane + b[4] * (yn**2 + xn**2)
        bias = np.exp(plane[None] + b[5] * zn[:, None, None])
    else:
        bias = np.ones((n_slices, h, w))

    n_t = len(contractions)
    image = np.empty((n_t, n_slices, h, w), dtype=np.float32)
    labels = np.empty((n_t, n_slices, h, w), dtype=np.uint8)
    sigma = noise * st.tissue["lv_blood"]
    for ti, contraction in enumerate(contractions):
        for z in range(n_slices):
            level = (z + 0.5) / n_slices
            img, lab = _render_slice(st, yy, xx, float(contraction), level)
            img = ndimage.gaussian_filter(img * texture[z], 0.6) * bias[z]
            if sigma > 0:
                n1 = rng.normal(0.0, sigma, img.shape)
                n2 = rng.normal(0.0, sigma, img.shape)
                img = np.sqrt((img + n1) ** 2 + n2**2)
            image[ti, z] = st.gain * (np.maximum(img, 0.0) ** st.gamma + st.offset)
            labels[ti, z] = lab
    return image, labels, _affine((float(slice_thickness), sy, sx), (n_slices, h, w))


def _contraction(phase: float) -> float:
    """0 at ED (phase 0 and 1), 1 at ES (phase 0.5)."""
    return float(0.5 * (1.0 - np.cos(2.0 * np.pi * phase)))


def make_cine_phantom(n_frames: int = 8, **options: Any) -> CinePhantom:
    """Make a synthetic short-axis cine study (for fast tests only, see the module docstring).

    Args:
        n_frames: cardiac phases over one beat; frame 0 is ED, frame ``n_frames // 2`` is ES.
        **options: what the study looks like, :class:`PhantomOptions` (``n_slices``,
            ``shape``, ``spacing``, ``slice_thickness``, ``seed``, ``noise``, ``bias_field``,
            ``contrast_jitter``); the same arguments give the same phantom.

    Returns:
        A :class:`CinePhantom` with ``image`` float32 and ``labels`` uint8, both
        ``(n_frames, n_slices, H, W)``; the time step is ``CYCLE_MS / n_frames`` ms.
    """
    opts = PhantomOptions.of(options)
    if n_frames < 1:
        raise InputError("n_frames must be at least 1")
    contractions = [_contraction(t / n_frames) for t in range(n_frames)]
    image, labels, affine = _render(contractions, opts)
    (sy, sx), thickness = opts.spacing, float(opts.slice_thickness)
    return CinePhantom(
        image=image,
        labels=labels,
        spacing=(CYCLE_MS / n_frames, thickness, float(sy), float(sx)),
        affine=affine,
        ed_frame=0,
        es_frame=n_frames // 2,
    )


def make_phantom_volume(phase: float = 0.0, **options: Any) -> PhantomVolume:
    """One 3D phantom volume ``(z, y, x)`` at a cardiac ``phase`` (0 = ED, 0.5 = ES, 1 = ED).

    ``options`` as :func:`make_cine_phantom` (:class:`PhantomOptions`): the same anatomy,
    contrast and bias as the cine of the same options (the noise realisation differs). For
    tests only.
    """
    opts = PhantomOptions.of(options)
    if not 0.0 <= phase <= 1.0:
        raise InputError("phase must be in [0, 1]")
    image, labels, affine = _render([_contraction(phase)], opts)
    (sy, sx), thickness = opts.spacing, float(opts.slice_thickness)
    return PhantomVolume(
        image=image[0], labels=labels[0], spacing=(thickness, float(sy), float(sx)), affine=affine
    )


def write_phantom_nifti(
    directory: str | Path,
    labelled_frames: list[int] | None = None,
    write_json: bool = False,
    **phantom_kwargs: object,
) -> tuple[Path, Path]:
    """Write a phantom cine as NIfTI: ``phantom_4d.nii.gz`` and ``phantom_4d_gt.nii.gz``.

    Arrays are stored in NIfTI order ``(x, y, z, t)`` with the phantom's affine (qform and sform),
    ``pixdim`` = (sx, sy, slice thickness, time step in ms) and units mm / ms.

    Args:
        directory: output folder (created if needed).
        labelled_frames: if given, keep labels only on these time frames and write 0 elsewhere
            (Sunnybrook-style partial labels, where 0 means "unlabelled").
        write_json: also write ``phantom_labelled.json`` with ``myocardium_frames_zt`` (the
            ``[z, t]`` pairs that contain myocardium), like the Sunnybrook study.
        **phantom_kwargs: passed to :func:`make_cine_phantom`.

    Returns:
        ``(image_path, labels_path)``.
    """
    import nibabel as nib

    ph = make_cine_phantom(**phantom_kwargs)
    labels = ph.labels.copy()
    if labelled_frames is not None:
        keep = np.zeros(labels.shape[0], dtype=bool)
        keep[list(labelled_frames)] = True
        labels[~keep] = 0

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "phantom_4d.nii.gz"
    labels_path = out / "phantom_4d_gt.nii.gz"
    zooms = (ph.spacing[3], ph.spacing[2], ph.spacing[1], ph.spacing[0])
    for arr, path in ((ph.image, image_path), (labels, labels_path)):
        nii = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(3, 2, 1, 0)), ph.affine)
        nii.header.set_zooms(zooms)
        nii.header.set_xyzt_units("mm", "msec")
        nii.set_qform(ph.affine, code=1)
        nii.set_sform(ph.affine, code=1)
        nib.save(nii, str(path))
    if write_json:
        pairs = [
            [int(z), int(t)]
            for t in range(labels.shape[0])
            for z in range(labels.shape[1])
            if np.any(labels[t, z] == 2)
        ]
        (out / "phantom_labelled.json").write_text(
            json.dumps({"patient": "phantom", "myocardium_frames_zt": pairs}, indent=1)
        )
    return image_path, labels_path
