"""The training recipe: datasets + trainer + checkpoint, as used by ``napari-sdnet train``.

Two steps, both thin compositions of the package's parts:

* :func:`build_train_data` loads a dataset folder (ACDC H5 split or ACDC NIfTI patient folders)
  on the model grid and makes the :class:`~napari_sdnet.training.trainer.TrainData` of the
  semi-supervised protocol: a labelled subset of the TRAINING patients, the other training
  slices as the unlabelled pool (labels hidden), validation patients for early stopping, and
  the "real" masks for the mask discriminator.
* :func:`train_model` builds the model of a preset, runs
  :func:`~napari_sdnet.training.trainer.train` (yielding its
  :class:`~napari_sdnet.training.trainer.Progress`) and writes the best weights with a
  :class:`~napari_sdnet.training.checkpoint.CheckpointInfo` that records how they were made.

Protocol (the paper's and the reference code's, with its known flaws fixed):

* ACDC H5: labelled and unlabelled slices come only from ``train.list``; validation is
  ``val.list``; ``test.list`` is never read. The pool is checked with
  :func:`~napari_sdnet.io.datasets.check_training_only`.
* The real masks for D_M are, by default, all masks of the training split (unpaired with the
  images the generator sees, as in the paper); ``real_masks="labelled"`` uses only the
  labelled subset's masks (stricter: no label of an "unlabelled" slice is used at all).
* ACDC NIfTI: the patients given (default: all in the folder) minus the validation patients
  (given, or a seeded 20 % of them, at least one when there are two or more).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sdnet.choices import LABELLED_BY, REAL_MASKS
from napari_sdnet.errors import InputError, TrainingError
from napari_sdnet.io.datasets import (
    SliceSet,
    check_training_only,
    detect_layout,
    iter_acdc_h5,
    iter_acdc_nifti,
    split_labelled,
)
from napari_sdnet.io.files import check_destination
from napari_sdnet.preprocess import PreprocessConfig
from napari_sdnet.training.checkpoint import (
    load_train_state,
    non_finite_tensors,
    save_train_state,
    train_state_path,
)
from napari_sdnet.training.trainer import (
    AugmentConfig,
    Progress,
    Resume,
    TrainConfig,
    TrainData,
    check_budget,
    train,
)

__all__ = [
    "TrainResult",
    "build_train_data",
    "train_model",
]

#: Seconds between two saves of the resumable training state (``train_model``).
CHECKPOINT_SECONDS = 300.0
#: Share of ACDC NIfTI patients held out for validation when none are named.
VAL_FRACTION = 0.2
#: ACDC's typical in-plane spacing (mm); used only to warn about H5 data on odd presets.
_ACDC_TYPICAL_SPACING = 1.5


def _collect(
    records: Iterable[Any], size: int, limit: int | None, with_labels: bool = False
) -> SliceSet:
    if limit is not None:
        records = itertools.islice(records, limit)
    return SliceSet.concat((r.to_sliceset(with_labels) for r in records), size=size)


def _check_count(value: int | None, what: str, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _patient_names(patients: Iterable[str | int]) -> list[str]:
    out = []
    for p in patients:
        text = str(p).strip().lower()
        if text.startswith("patient"):
            text = text[len("patient") :]
        if not text.isdigit():
            raise InputError(f"not an ACDC patient id: {p!r} (use e.g. patient003, 003 or 3)")
        out.append(f"patient{int(text):03d}")
    return list(dict.fromkeys(out))


def _acdc_nifti_patients(root: Path) -> list[str]:
    names = sorted(
        d.name.lower()
        for d in root.iterdir()
        if d.is_dir() and d.name.lower().startswith("patient") and d.name[7:].isdigit()
    )
    if not names and root.name.lower().startswith("patient"):
        names = [root.name.lower()]
    return names


def build_train_data(
    data_dir: str | os.PathLike[str],
    *,
    labelled: int | None = None,
    by: str = "images",
    n_unlabelled: int | None = None,
    h5_spacing: float | None = None,
    config: PreprocessConfig | None = None,
    seed: int = 0,
    real_masks: str = "all",
    max_volumes: int | None = None,
    val_volumes: int | None = None,
    patients: Sequence[str | int] | None = None,
    val_patients: Sequence[str | int] | None = None,
    split_root: str | os.PathLike[str] | None = None,
    with_labels: bool = False,
) -> tuple[TrainData, dict[str, Any]]:
    """Load ``data_dir`` and make the training data of the semi-supervised protocol.

    Args:
        data_dir: an ACDC H5 folder (``*.list`` + ``data/``) or a folder of ACDC
            ``patientNNN`` NIfTI folders (see ``docs/data.md``).
        labelled: how many labelled images/volumes/patients (``by``) to keep, chosen with
            ``seed``; ``None`` keeps every labelled training slice (no unlabelled pool then).
        by: ``"images"``, ``"volumes"`` or ``"patients"``.
        n_unlabelled: cap on the unlabelled pool (seeded random subset); ``None``: all.
        h5_spacing: H5 only: assumed in-plane spacing (mm) of the files, which store none.
            ``None``: their native pixel is taken to be the model's pixel (``config``).
        config: the model's preprocessing (default ``PreprocessConfig()``: 1.37 mm, 224).
        seed: the labelled subset, the pool cap and the default validation patients.
        real_masks: ``"all"`` (every mask of the training split) or ``"labelled"`` (the
            labelled subset's masks only) for the mask discriminator.
        max_volumes: H5 only: load only the first N volumes of ``train.list`` (quick runs).
        val_volumes: H5 only: validate on the first N volumes of ``val.list`` (0: none).
        patients: NIfTI only: patients to use (``"patient003"``, ``"003"`` or ``3``); default
            all in the folder.
        val_patients: NIfTI only: validation patients (excluded from training). Default: a
            seeded 20 % of ``patients`` (at least one when there are two or more); ``[]``:
            no validation.
        split_root: NIfTI only: an ACDC H5 folder whose split lists say which patients are
            validation/test; training on any of them is then refused.
        with_labels: also load the model-grid label maps of every structure (for models of
            several structures; ``TrainData.labelled_labels`` etc.).

    Returns:
        ``(data, description)``: the :class:`TrainData` and a JSON-friendly dict saying what
        was used (layout, counts, patients, options, warnings).

    Raises:
        InputError: unknown layout, bad options, too few labelled slices, a validation/test
            patient in the training pool.
    """
    config = PreprocessConfig() if config is None else config
    if by not in LABELLED_BY:
        raise InputError(f"by must be one of {', '.join(LABELLED_BY)}, got {by!r}")
    if real_masks not in REAL_MASKS:
        raise InputError(f"real_masks must be one of {', '.join(REAL_MASKS)}, got {real_masks!r}")
    _check_count(labelled, "the number of labelled " + by)
    _check_count(n_unlabelled, "the number of unlabelled images", minimum=0)
    _check_count(max_volumes, "max_volumes")
    _check_count(val_volumes, "val_volumes", minimum=0)
    root = Path(data_dir)
    layout = detect_layout(root)
    size = config.size
    desc: dict[str, Any] = {"data": root.name, "layout": layout, "seed": seed, "by": by}
    warnings: list[str] = []

    if layout == "acdc_h5":
        if patients is not None or val_patients is not None or split_root is not None:
            raise InputError("patients/val_patients/split_root apply to ACDC NIfTI folders only")
        train_set = _collect(
            iter_acdc_h5(root, "train", config, h5_spacing), size, max_volumes, with_labels
        )
        validation = (
            SliceSet.empty(size)
            if val_volumes == 0
            else _collect(
                iter_acdc_h5(root, "val", config, h5_spacing), size, val_volumes, with_labels
            )
        )
        split_root = root
        desc["h5_spacing"] = h5_spacing
        if max_volumes is not None:
            desc["max_volumes"] = max_volumes
        if h5_spacing is None and (
            abs(config.target_spacing - _ACDC_TYPICAL_SPACING) / _ACDC_TYPICAL_SPACING > 0.3
        ):
            warnings.append(
                f"the H5 files store no spacing and their native pixels (about "
                f"{_ACDC_TYPICAL_SPACING} mm in ACDC) are taken to be the model's "
                f"{config.target_spacing} mm pixels: the model will not fit correctly resampled "
                f"images; give h5_spacing (e.g. {_ACDC_TYPICAL_SPACING})"
            )
    elif layout == "acdc_nifti":
        if max_volumes is not None or val_volumes is not None or h5_spacing is not None:
            raise InputError("max_volumes/val_volumes/h5_spacing apply to the ACDC H5 layout only")
        available = _acdc_nifti_patients(root)
        chosen = available if patients is None else _patient_names(patients)
        if val_patients is None:
            n_val = int(round(VAL_FRACTION * len(chosen))) if len(chosen) >= 2 else 0
            n_val = max(n_val, 1) if len(chosen) >= 2 else 0
            rng = np.random.default_rng(seed)
            held = sorted(rng.choice(chosen, size=n_val, replace=False).tolist()) if n_val else []
        else:
            held = _patient_names(val_patients)
        train_patients = [p for p in chosen if p not in held]
        if not train_patients:
            raise InputError(f"{root}: no training patient left after the validation patients")
        train_set = _collect(iter_acdc_nifti(root, train_patients, config), size, None, with_labels)
        validation = (
            _collect(iter_acdc_nifti(root, held, config), size, None, with_labels)
            if held
            else SliceSet.empty(size)
        )
        desc["train_patients"] = train_patients
        desc["val_patients"] = held
    else:
        raise InputError(
            f"{root}: training needs an ACDC H5 folder or ACDC NIfTI patient folders; "
            "a single cine study (with partial labels) is for fine-tuning"
        )

    if split_root is not None:
        check_training_only(train_set, split_root)
    if train_set.n_labelled == 0:
        raise InputError(f"{root}: no labelled training slice")
    if labelled is None:
        lab_set = train_set.labelled_part()
        pool = train_set.unlabelled_part()
        if n_unlabelled is not None and n_unlabelled < len(pool):
            rng = np.random.default_rng(seed)
            pool = pool.subset(np.sort(rng.choice(len(pool), n_unlabelled, replace=False)))
    else:
        lab_set, pool = split_labelled(
            train_set, labelled, by=by, seed=seed, n_unlabelled=n_unlabelled
        )
    if split_root is not None:
        check_training_only(SliceSet.concat([lab_set, pool], size=size), split_root)
    validation = validation.labelled_part()
    real_set = lab_set if real_masks == "labelled" else train_set.labelled_part()
    real = real_set.masks
    data = TrainData.from_slice_sets(
        lab_set,
        unlabelled=pool if len(pool) else None,
        validation=validation if len(validation) else None,
        real_masks=real,
        real_labels=real_set.labels,
    )
    desc.update(
        labelled=len(lab_set),
        labelled_volumes=len(lab_set.volumes()),
        labelled_patients=len(lab_set.patients()),
        unlabelled=len(pool),
        real_masks=f"{real_masks} ({len(real)} masks)",
        train_volumes=len(train_set.volumes()),
        train_patients_count=len(train_set.patients()),
        val_slices=len(validation),
        val_volumes=len(validation.volumes()),
    )
    if not len(validation):
        warnings.append("no validation data: no early stopping, the last weights are kept")
    desc["warnings"] = warnings
    return data, desc


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    path: Path
    info: Any  # CheckpointInfo
    final: Progress | None
    description: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "budget"
    #: the saved training state, kept when training was stopped early (continue with resume)
    state_path: Path | None = None


def train_model(
    data_dir: str | os.PathLike[str],
    preset: str = "paper",
    model_type: str = "sdnet",
    labelled: int | None = None,
    *,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    by: str = "images",
    n_unlabelled: int | None = None,
    h5_spacing: float | None = None,
    real_masks: str = "all",
    max_volumes: int | None = None,
    val_volumes: int | None = None,
    patients: Sequence[str | int] | None = None,
    val_patients: Sequence[str | int] | None = None,
    split_root: str | os.PathLike[str] | None = None,
    iterations: int | None = None,
    epochs: int | None = 200,
    seconds: float | None = None,
    patience: int | None = 20,
    batch_size: int = 4,
    lr: float = 1e-4,
    seed: int = 0,
    augment: bool = True,
    device: str = "auto",
    init: str | os.PathLike[str] | None = None,
    freeze: Sequence[str] = (),
    select_on: str = "dice",
    reinit: Sequence[str] = (),
    rampup: int = 0,
    lr_schedule: str = "constant",
    on_data: Any = None,
    resume: bool = False,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
    stop: Callable[[], str | None] | None = None,
    structures: Sequence[str] = ("myocardium",),
    scanner_augment: bool = False,
    base_filters: int | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train a model of ``preset`` on ``data_dir`` and write its best weights to ``output``.

    A generator: it yields the trainer's :class:`Progress` and returns a :class:`TrainResult`
    (``StopIteration.value``; :func:`~napari_sdnet.training.trainer.run_to_end` style drivers
    get it from ``yield from``). The data options are those of :func:`build_train_data`, the
    loop options those of :class:`TrainConfig` (``iterations``, ``epochs``, ``seconds`` are
    its budgets). ``on_data(description)`` is called once the data are loaded (the CLI
    prints it). ``init`` starts from the weights of a checkpoint of the same preset (e.g. a
    ``unet`` pre-training continued with the SDNet losses) instead of a fresh initialisation.
    ``freeze`` (parameter-name prefixes kept as they are) and ``select_on`` (``"dice"`` or
    ``"reconstruction"``) are :class:`TrainConfig`'s, e.g. to fit only the Z head and the
    reconstructor of a trained segmenter (``docs/training.md``). ``reinit`` (with ``init``):
    parameter-name prefixes whose weights start afresh (seeded) instead of from ``init``.
    ``rampup``: iterations over which the unsupervised and adversarial terms ramp up;
    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (down to 0 at the end of the budget)
    (both :class:`TrainConfig`'s).

    On ``KeyboardInterrupt`` (raised inside, or thrown in with ``generator.throw``) training
    stops, the best weights so far are written anyway and the result says ``"interrupted"``.
    The output file is checked first (folder exists and is writable, no existing file without
    ``overwrite``), and so are the numbers (``lr`` finite and > 0, budgets > 0), so bad
    settings fail before any work is done.

    Resumable: every ``checkpoint_seconds`` (default 5 minutes; None: never) the whole training
    state is saved atomically to :func:`~napari_sdnet.training.checkpoint.train_state_path`
    (``OUTPUT.resume.safetensors``), and again when training is stopped early; ``resume=True``
    continues from it (same data and settings; the budgets may be raised) as if never stopped.
    The state file is removed when a run ends normally. ``stop()``, polled after every
    iteration, ends training cleanly when it returns a reason (e.g. ``"terminated"`` on
    SIGTERM): the best weights so far are written and the state is saved for ``resume``.

    ``structures``: what the model segments, ``("myocardium",)`` (the paper) or
    ``("rv", "myocardium", "lv")`` (a multi-channel anatomy factor; ACDC labels 1, 2, 3).
    ``scanner_augment``: add the scanner/protocol-shift MR transforms to the augmentation
    (:func:`~napari_sdnet.training.trainer.mr_transforms`). ``base_filters``: the U-Net's
    first width instead of the preset's (it doubles per level), to compare model sizes.

    A run whose loss became NaN/infinite (``"diverged"``) or whose weights are not finite
    raises :class:`~napari_sdnet.errors.TrainingError` and writes no model.
    """
    import torch

    from napari_sdnet.device import describe_device, resolve_device
    from napari_sdnet.model import SDNet, get_preset
    from napari_sdnet.training.checkpoint import (
        CheckpointInfo,
        preprocess_config_for,
        save_checkpoint,
    )

    output = Path(output)
    if output.suffix != ".safetensors":
        raise InputError(f"model files end in .safetensors, got {output.name}")
    state_path = train_state_path(output)
    check_destination(output, overwrite=overwrite or resume, what="model")
    check_budget(lr=lr, iterations=iterations, epochs=epochs, seconds=seconds)
    if patience is not None and (isinstance(patience, bool) or patience < 0):
        raise InputError(f"patience must be >= 0 epochs, got {patience!r}")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise InputError(f"checkpoint_seconds must be > 0, got {checkpoint_seconds!r}")
    recipe = {
        # folder names, not paths: a run may continue on another machine
        "data": Path(data_dir).resolve().name,
        "preset": preset,
        "model_type": model_type,
        "labelled": labelled,
        "by": by,
        "n_unlabelled": n_unlabelled,
        "h5_spacing": h5_spacing,
        "real_masks": real_masks,
        "max_volumes": max_volumes,
        "val_volumes": val_volumes,
        "patients": None if patients is None else [str(p) for p in patients],
        "val_patients": None if val_patients is None else [str(p) for p in val_patients],
        "seed": seed,
        "init": None if init is None else Path(init).name,
        "structures": list(structures),
        "reinit": list(reinit),
        "base_filters": base_filters,
    }
    snapshot = None
    if not resume and not overwrite and state_path.exists():
        raise InputError(
            f"{state_path}: a stopped training's state is there; continue it with --resume, "
            "or pass --overwrite to start afresh"
        )
    if resume:
        snapshot, saved_recipe = load_train_state(state_path)
        changed = sorted(k for k in recipe if saved_recipe.get(k) != recipe[k])
        if changed:
            raise InputError(
                f"{state_path.name} was saved by a training with other {', '.join(changed)}; "
                "resume with the same command (only the budgets may change)"
            )
    model_config = get_preset(preset).replace(structures=tuple(structures))
    if base_filters is not None:  # checked by ModelConfig, as every width
        model_config = model_config.replace(base_filters=base_filters)
    dev = resolve_device(device)
    if reinit and init is None:
        raise InputError("reinit needs init: it restarts parts of an initial model")
    if init is not None:
        from napari_sdnet.training.checkpoint import load_checkpoint

        # Checked before the (slow) data loading: a mismatched preset fails at once.
        init_model, init_info = load_checkpoint(init, device="cpu", expected_preset=preset)
        if init_info.model_config != model_config:
            raise InputError(
                f"{Path(init).name} is a {preset!r} model of another configuration than this "
                f"version's preset with {', '.join(model_config.structures)} (it has "
                f"{', '.join(init_info.model_config.structures)})"
            )
        names = list(init_model.state_dict())
        for prefix in reinit:
            if not any(k.startswith(prefix) for k in names):
                raise InputError(f"reinit: no parameter name starts with {prefix!r}")
    cfg = TrainConfig(
        model_type=model_type,
        batch_size=batch_size,
        lr=lr,
        max_iterations=iterations,
        max_epochs=epochs,
        max_seconds=seconds,
        patience=patience,
        seed=seed,
        augment=AugmentConfig(enabled=augment, mr=scanner_augment),
        freeze=tuple(freeze),
        select_on=select_on,
        rampup=rampup,
        lr_schedule=lr_schedule,
    )
    preprocess = preprocess_config_for(model_config)
    data, desc = build_train_data(
        data_dir,
        labelled=labelled,
        by=by,
        n_unlabelled=n_unlabelled,
        h5_spacing=h5_spacing,
        config=preprocess,
        seed=seed,
        real_masks=real_masks,
        max_volumes=max_volumes,
        val_volumes=val_volumes,
        patients=patients,
        val_patients=val_patients,
        split_root=split_root,
        with_labels=model_config.n_structures > 1,
    )
    if model_type == "unet":
        desc["unlabelled_used"] = 0
    if on_data is not None:
        on_data(desc)
    torch.manual_seed(seed)
    if init is not None and reinit:
        fresh = SDNet(model_config).state_dict()
        state = init_model.state_dict()
        for prefix in reinit:
            state.update({k: v for k, v in fresh.items() if k.startswith(prefix)})
        init_model.load_state_dict(state)
        torch.manual_seed(seed)
    model = (init_model if init is not None else SDNet(model_config)).to(dev)
    control = Resume(snapshot=snapshot)
    trainer = train(model, data, cfg, resume=control)
    final: Progress | None = None
    last: Progress | None = None
    stop_reason = "budget"
    suspended = False  # the trainer waits at a yield: its state can be captured
    state_saved: Path | None = None
    last_save = time.monotonic()

    def save_state() -> None:
        nonlocal state_saved, last_save
        state_saved = save_train_state(state_path, control.capture(), recipe)
        last_save = time.monotonic()

    try:
        for progress in trainer:
            suspended = True
            if progress.done:
                final = progress
                stop_reason = progress.stop_reason or stop_reason
            else:
                last = progress
            yield progress
            if progress.done:
                break
            reason = stop() if stop is not None else None
            if reason:
                save_state()
                trainer.close()
                stop_reason = reason
                break
            if (
                checkpoint_seconds is not None
                and time.monotonic() - last_save >= checkpoint_seconds
            ):
                save_state()
            suspended = False
    except KeyboardInterrupt:
        if suspended:
            save_state()
        trainer.close()  # restores the best weights if the trainer was waiting at a yield
        stop_reason = "interrupted"
    end = final or last
    if stop_reason == "diverged":
        kept = f"; the saved state {state_saved.name} is kept" if state_saved else ""
        raise TrainingError(
            f"training diverged at iteration {end.iteration if end else 0} (the loss became NaN "
            f"or infinite): no model was written{kept}. Try a lower learning rate (--lr)"
        )
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise TrainingError(
            f"training produced NaN or infinite weights (e.g. {bad[0]}): no model was written. "
            "Try a lower learning rate (--lr)"
        )
    iterations_done = (
        end.iteration if end is not None else (snapshot.meta["iteration"] if snapshot else 0)
    )
    seconds_used = end.elapsed if end is not None else 0.0
    best = end.best_val_dice if end is not None else None
    best_iter = end.best_iteration if end is not None else None
    training: dict[str, Any] = {
        "data": desc["data"],
        "layout": desc["layout"],
        "labelled": desc["labelled"],
        "by": by,
        "unlabelled": desc["unlabelled"] if model_type != "unet" else 0,
        "real_masks": real_masks,
        "h5_spacing": h5_spacing,
        "iterations": iterations_done,
        "seconds": round(seconds_used, 1),
        "device": describe_device(dev),
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "augment": augment,
        "stop_reason": stop_reason,
    }
    if freeze:
        training["freeze"] = list(freeze)
    if reinit:
        training["reinit"] = list(reinit)
    if select_on != "dice":
        training["select_on"] = select_on
    if rampup:
        training["rampup"] = rampup
    if lr_schedule != "constant":
        training["lr_schedule"] = lr_schedule
    if scanner_augment:
        training["scanner_augment"] = True
    if init is not None:
        training["init"] = {
            "model": Path(init).name,
            "model_type": init_info.model_type,
            "training": init_info.training,
            "metrics": init_info.metrics,
        }
    for key in ("max_volumes", "train_patients", "val_patients"):
        if key in desc:
            training[key] = desc[key]
    metrics: dict[str, Any] = {}
    if best is not None:
        metrics = {
            "val_dice": round(float(best), 4),
            "val_iteration": best_iter,
            "val_volumes": desc["val_volumes"],
        }
        if end is not None and end.best_val_recon_l1 is not None:
            metrics["val_recon_l1"] = round(float(end.best_val_recon_l1), 4)
    info = CheckpointInfo.for_model(
        model_config,
        model_type=model_type,
        training=training,
        metrics=metrics,
        preprocess=preprocess,
    )
    if snapshot is not None:
        training["resumed_from_iteration"] = int(snapshot.meta["iteration"])
    path = save_checkpoint(output, model, info, overwrite=overwrite or resume)
    if stop_reason in ("interrupted", "terminated") and state_saved is not None:
        kept = state_saved
    else:
        kept = None
        if state_path.exists():
            state_path.unlink()
    return TrainResult(
        path=path,
        info=info,
        final=final,
        description=desc,
        stop_reason=stop_reason,
        state_path=kept,
    )
