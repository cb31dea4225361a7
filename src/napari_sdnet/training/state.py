"""Resumable training: :class:`TrainState` (everything a run needs to continue), :class:`Resume`
(how :func:`~napari_sdnet.training.trainer.train` takes and gives snapshots) and the helpers
that turn optimiser states into tensors + JSON (saved by
:func:`~napari_sdnet.training.checkpoint.save_train_state`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from napari_sdnet.errors import InputError
from napari_sdnet.training.augment import _mr_generators


@dataclass
class TrainState:
    """Everything a run needs to continue where it stopped (see :class:`Resume`).

    ``tensors``: flat ``name -> CPU tensor`` (model, kept weights, optimiser moments, pools of
    fakes, random generator); ``meta``: JSON-friendly counters, scores, NumPy random state and
    the settings the run was started with (checked on resume).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclass
class Resume:
    """Continue a run from ``snapshot``, and/or get ``capture()`` to snapshot this one.

    Pass it to :func:`train`; once the generator has started, ``capture()`` returns a
    :class:`TrainState` of the run as it stands at the current yield (call it only between
    yields). Resuming with the same data and settings continues exactly as the uninterrupted
    run would have (same batches, augmentation and optimiser state); the budgets
    (``max_iterations``, ``max_epochs``, ``max_seconds``, ``patience``) may be changed.
    """

    snapshot: TrainState | None = None
    capture: Any = None  # Callable[[], TrainState], set by train()


#: TrainConfig fields a resumed run may change (budgets); every other setting must match.
_RESUMABLE_CHANGES = ("max_iterations", "max_epochs", "max_seconds", "patience")


def _config_fingerprint(config: Any) -> dict[str, Any]:
    out = asdict(config)
    for key in _RESUMABLE_CHANGES:
        out.pop(key)
    out.pop("amp")
    return json.loads(json.dumps(out, default=list))


def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested state (optimiser ``state_dict``) into ``tensors``; return
    the JSON-friendly rest, tensors replaced by ``{"tensor": name}``."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").clone().contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {str(k): _flatten(f"{prefix}/{k}", v, tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(f"{prefix}/{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return tensors[value["tensor"]]
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def _optimizer_state(saved: dict[str, Any]) -> dict[str, Any]:
    """An optimiser ``state_dict`` read back from JSON (integer parameter indices)."""
    return {
        "state": {int(k): v for k, v in saved["state"].items()},
        "param_groups": saved["param_groups"],
    }


def snapshot_run(self: Any) -> TrainState:
    """The run as it stands between two iterations (CPU copies; see :class:`Resume`)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in self.model.state_dict().items():
        tensors[f"model/{key}"] = value.detach().to("cpu").clone().contiguous()
    for key, value in (self.best_state or {}).items():
        tensors[f"best/{key}"] = value.clone().contiguous()
    for name, pool in (("pool_m", self.pool_m), ("pool_x", self.pool_x)):
        if pool.items:
            tensors[name] = torch.stack([t.to("cpu") for t in pool.items]).contiguous()
    tensors["torch_generator"] = self.gen.get_state().clone()
    mr_states = []
    for i, rng in enumerate(_mr_generators(self.mr_aug) if self.mr_aug is not None else []):
        kind, keys, pos, has_gauss, cached = rng.get_state()
        tensors[f"mr_aug/{i}"] = torch.from_numpy(np.asarray(keys, np.int64))
        mr_states.append([kind, int(pos), int(has_gauss), float(cached)])
    tensors["torch_global"] = torch.get_rng_state().clone()
    streams = {}
    for name in ("lab_stream", "unl_stream", "real_stream"):
        stream = getattr(self, name)
        if stream is not None:
            tensors[f"{name}/order"] = torch.from_numpy(np.asarray(stream.order, np.int64))
            streams[name] = stream.pos
    meta = {
        "fingerprint": self._fingerprint(),
        "iteration": self.iteration,
        "elapsed": self.elapsed,
        "stale_epochs": self.stale_epochs,
        "best_dice": self.best_dice,
        "best_l1": self.best_l1,
        "best_score": self.best_score,
        "best_iter": self.best_iter,
        "has_best": self.best_state is not None,
        "numpy_rng": self.rng.bit_generator.state,
        "mr_aug": mr_states,
        "streams": streams,
        "opt_g": _flatten("opt_g", self.opt_g.state_dict(), tensors),
        "opt_d": None
        if self.opt_d is None
        else _flatten("opt_d", self.opt_d.state_dict(), tensors),
        "scaler_g": self.scaler_g.state_dict(),
        "scaler_d": self.scaler_d.state_dict(),
    }
    return TrainState(tensors=tensors, meta=meta)


def restore_run(self: Any, state: TrainState) -> None:
    """Continue from ``state`` (a :meth:`snapshot` of a run with the same data/settings)."""
    meta, tensors = state.meta, state.tensors
    mine, theirs = self._fingerprint(), meta.get("fingerprint")
    if theirs != mine:
        diff = sorted(
            k for k in set(mine) | set(theirs or {}) if mine.get(k) != (theirs or {}).get(k)
        )
        if "config" in diff:
            changed = sorted(
                k
                for k in mine["config"]
                if mine["config"][k] != (theirs or {}).get("config", {}).get(k)
            )
            diff = [d for d in diff if d != "config"] + [f"setting {k}" for k in changed]
        raise InputError(
            "the saved training state was made with other data or settings "
            f"({', '.join(diff)} differ); resume with the same command"
        )
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    self.model.load_state_dict(model_state)
    if meta["has_best"]:
        self.best_state = {
            k[len("best/") :]: v.clone() for k, v in tensors.items() if k.startswith("best/")
        }
    for name, pool in (("pool_m", self.pool_m), ("pool_x", self.pool_x)):
        pool.items = [t.to(self.device) for t in tensors[name]] if name in tensors else []
    self.gen.set_state(tensors["torch_generator"])
    torch.set_rng_state(tensors["torch_global"])
    self.rng.bit_generator.state = meta["numpy_rng"]
    if self.mr_aug is not None:
        for i, (rng, (kind, pos, has_gauss, cached)) in enumerate(
            zip(_mr_generators(self.mr_aug), meta["mr_aug"], strict=True)
        ):
            keys = tensors[f"mr_aug/{i}"].numpy().astype(np.uint32)
            rng.set_state((kind, keys, pos, has_gauss, cached))
    for name, pos in meta["streams"].items():
        stream = getattr(self, name)
        stream.order = tensors[f"{name}/order"].numpy().copy()
        stream.pos = int(pos)
    self.opt_g.load_state_dict(_optimizer_state(_unflatten(meta["opt_g"], tensors)))
    if self.opt_d is not None and meta["opt_d"] is not None:
        self.opt_d.load_state_dict(_optimizer_state(_unflatten(meta["opt_d"], tensors)))
    if meta["scaler_g"]:
        self.scaler_g.load_state_dict(meta["scaler_g"])
    if meta["scaler_d"]:
        self.scaler_d.load_state_dict(meta["scaler_d"])
    self.iteration = int(meta["iteration"])
    self.stale_epochs = int(meta["stale_epochs"])
    self.best_dice, self.best_l1 = meta["best_dice"], meta["best_l1"]
    self.best_score, self.best_iter = meta["best_score"], meta["best_iter"]
    self.elapsed_before = float(meta["elapsed"])
    self.start = time.perf_counter()
