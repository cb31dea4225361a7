"""Batched inference on model-grid slices (pure PyTorch; shared by the API, trainer and widgets)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from napari_sdnet.model import SDNet


@dataclass
class SliceOutputs:
    """Model outputs for ``N`` slices on the model grid."""

    probability: np.ndarray  # float32 (N, S, S): soft mask M
    z: np.ndarray  # float32 (N, z_dim)
    reconstruction: np.ndarray  # float32 (N, S, S): g(round(M), Z) in [-1, 1]


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def iter_predict(
    model: SDNet, images: np.ndarray, batch_size: int = 16
) -> Iterator[tuple[int, SliceOutputs]]:
    """Run ``model`` over ``images`` (N, S, S) in batches, yielding ``(n_done, outputs)``.

    Yielding after every batch lets callers report progress and stop early. Runs in eval mode
    under ``torch.inference_mode`` (mixed precision on CUDA) on the model's device.
    """
    images = np.asarray(images, dtype=np.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            # The inference-mode context is left before each yield: grad mode is per thread,
            # and a caller (e.g. a worker thread that is later reused for training) must not
            # be left without gradients while this generator is suspended or abandoned.
            with torch.inference_mode(), _autocast(device):
                batch = torch.from_numpy(images[start : start + batch_size]).to(device)
                out = model(batch[:, None])
                outputs = SliceOutputs(
                    probability=out.mask[:, 0].float().cpu().numpy(),
                    z=out.z.float().cpu().numpy(),
                    reconstruction=out.reconstruction[:, 0].float().cpu().numpy(),
                )
            yield min(start + batch_size, len(images)), outputs
    finally:
        model.train(was_training)


def predict_slices(model: SDNet, images: np.ndarray, batch_size: int = 16) -> SliceOutputs:
    """All outputs for ``images`` (N, S, S) at once (see :func:`iter_predict`)."""
    parts = [outputs for _, outputs in iter_predict(model, images, batch_size)]
    z_dim = model.config.z_dim
    size = model.config.image_size
    if not parts:
        empty = np.zeros((0, size, size), np.float32)
        return SliceOutputs(empty, np.zeros((0, z_dim), np.float32), empty.copy())
    return SliceOutputs(
        probability=np.concatenate([p.probability for p in parts]),
        z=np.concatenate([p.z for p in parts]),
        reconstruction=np.concatenate([p.reconstruction for p in parts]),
    )


def decode_latents(
    model: SDNet, masks: np.ndarray, z: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """g(round(M), Z) for any masks (N, S, S) and Z (N, z_dim): latent mixing's primitive."""
    masks = np.asarray(masks, dtype=np.float32)
    z = np.asarray(z, dtype=np.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), _autocast(device):
            for start in range(0, len(masks), batch_size):
                m = torch.from_numpy(masks[start : start + batch_size]).to(device)[:, None]
                zz = torch.from_numpy(z[start : start + batch_size]).to(device)
                out.append(model.decode(m, zz)[:, 0].float().cpu().numpy())
    finally:
        model.train(was_training)
    size = model.config.image_size
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)
