"""Model checkpoints: safetensors weights + JSON info, atomic writes, refusals with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_sdnet.errors import CheckpointError, InputError
from napari_sdnet.inference import predict_slices
from napari_sdnet.model import SDNet, get_preset
from napari_sdnet.training import checkpoint as checkpoint_module
from napari_sdnet.training.checkpoint import (
    FORMAT,
    CheckpointInfo,
    load_checkpoint,
    preprocess_config_for,
    read_checkpoint_info,
    save_checkpoint,
)


def _trained_looking_model() -> SDNet:
    """A tiny model whose weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(0)
    model = SDNet("tiny")
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model.eval()


def _info(model: SDNet, **kwargs) -> CheckpointInfo:
    return CheckpointInfo.for_model(model.config, **kwargs)


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 64, 64)).astype(np.float32)


def test_save_load_gives_identical_outputs(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info.preset == "tiny" and info.model_type == "sdnet"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = _images()
    a, b = predict_slices(model, x), predict_slices(loaded, x)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)


def test_info_round_trip(tmp_path):
    model = _trained_looking_model()
    info = _info(
        model,
        model_type="gan",
        training={"data": "acdc_h5", "labelled": 34, "n": np.int64(3), "dir": Path("a/b")},
        metrics={"val_dice": 0.5, "val_iteration": 20},
    )
    path = save_checkpoint(tmp_path / "m.safetensors", model, info)
    read = read_checkpoint_info(path)
    assert read.model_config == model.config == get_preset("tiny")
    assert read.preprocess == preprocess_config_for(model.config)
    assert read.preprocess.target_spacing == 4.0 and read.preprocess.size == 64
    assert read.model_type == "gan"
    assert read.training == {"data": "acdc_h5", "labelled": 34, "n": 3, "dir": "a/b"}
    assert read.metrics == {"val_dice": 0.5, "val_iteration": 20}
    assert read.created and read.version and read.has_discriminators
    assert "tiny" in read.summary() and "val_dice" in read.summary()
    assert CheckpointInfo.from_dict(read.to_dict()) == read


def test_unstorable_info_is_an_input_error(tmp_path):
    model = _trained_looking_model()
    with pytest.raises(InputError, match="JSON"):
        save_checkpoint(tmp_path / "m.safetensors", model, _info(model, training={"x": object()}))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_refuses_overwrite(tmp_path, monkeypatch):
    model = _trained_looking_model()
    path = tmp_path / "sub" / "m.safetensors"
    save_checkpoint(path, model, _info(model))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]
    original = path.read_bytes()
    with pytest.raises(InputError, match="exists"):
        save_checkpoint(path, model, _info(model))
    # A failing write leaves neither a temporary file nor a damaged target.
    import safetensors.torch

    def broken(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setenv("SDNET_RESCUE_DIR", str(tmp_path / "rescue"))
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(InputError, match="cannot write.*disk full.*nor to"):
        save_checkpoint(path, model, _info(model), overwrite=True)
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]
    assert list((tmp_path / "rescue").iterdir()) == []
    monkeypatch.undo()
    save_checkpoint(path, model, _info(model, model_type="unet"), overwrite=True)
    assert read_checkpoint_info(path).model_type == "unet"


def test_a_failing_destination_rescues_the_model(tmp_path, monkeypatch):
    """Disk full (safetensors' own error) at the destination: the model goes to the rescue
    folder, the error names it, and it loads; umask permissions on both."""
    import safetensors.torch
    from safetensors import SafetensorError

    from napari_sdnet.errors import RescuedWrite

    model = _trained_looking_model()
    rescue = tmp_path / "rescue"
    monkeypatch.setenv("SDNET_RESCUE_DIR", str(rescue))
    real = safetensors.torch.save_file
    dest = tmp_path / "out"
    dest.mkdir()

    def full_disk(state, filename, metadata=None):
        if Path(filename).parent == dest:
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")
        real(state, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(RescuedWrite, match="No space left.*saved to") as caught:
        save_checkpoint(dest / "m.safetensors", model, _info(model))
    assert list(dest.iterdir()) == []
    saved = caught.value.path
    assert saved.parent == rescue and saved.name.endswith(".safetensors")
    assert oct(saved.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    loaded, _ = load_checkpoint(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_model_files_follow_the_umask(tmp_path):
    import os

    model = _trained_looking_model()
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_non_finite_weights_are_refused_on_save_and_load(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _trained_looking_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    state = load_file(str(path))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(broken)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="refusing to save.*NaN or infinite"):
        save_checkpoint(tmp_path / "m2.safetensors", model, _info(model))
    assert not (tmp_path / "m2.safetensors").exists()


def test_bad_names_and_mismatched_info_are_refused(tmp_path):
    model = _trained_looking_model()
    with pytest.raises(InputError, match=".safetensors"):
        save_checkpoint(tmp_path / "m.pt", model, _info(model))
    other = CheckpointInfo.for_model(get_preset("compact"))
    with pytest.raises(InputError, match="configuration"):
        save_checkpoint(tmp_path / "m.safetensors", model, other)


def test_without_discriminators(tmp_path):
    model = _trained_looking_model()
    full = save_checkpoint(tmp_path / "full.safetensors", model, _info(model))
    small = save_checkpoint(
        tmp_path / "small.safetensors", model, _info(model), include_discriminators=False
    )
    assert small.stat().st_size < full.stat().st_size
    loaded, info = load_checkpoint(small)
    assert not info.has_discriminators
    for key, value in model.state_dict().items():
        if not key.startswith(("mask_discriminator", "image_discriminator")):
            assert torch.equal(loaded.state_dict()[key], value), key
    x = _images(2)
    np.testing.assert_array_equal(
        predict_slices(model, x).probability, predict_slices(loaded, x).probability
    )


def test_map_to_cpu(tmp_path):
    model = _trained_looking_model()
    if torch.cuda.is_available():
        model = model.cuda()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    for device in ("cpu", torch.device("cpu")):
        loaded, _ = load_checkpoint(path, device=device)
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        assert all(b.device.type == "cpu" for b in loaded.buffers())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_to_cuda(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    loaded, _ = load_checkpoint(path, device="cuda")
    assert all(p.is_cuda for p in loaded.parameters())


# ------------------------------------------------------------------------------- refusals
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a napari-sdnet model") as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a napari-sdnet model"):
        read_checkpoint_info(empty)


def test_torch_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickle.safetensors"

    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (pytest.fail, ("the checkpoint was unpickled",))

    torch.save({"state": SDNet("tiny").state_dict(), "boom": Boom()}, path)
    with pytest.raises(CheckpointError, match="not a napari-sdnet model"):
        load_checkpoint(path)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in SDNet("tiny").state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="no napari-sdnet metadata"):
        load_checkpoint(path)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no napari-sdnet metadata"):
        read_checkpoint_info(other)


def _write_raw(path: Path, state: dict, info: dict | str, version: str = "1") -> Path:
    text = info if isinstance(info, str) else json.dumps(info)
    meta = {"format": FORMAT, "format_version": version, "info": text}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def test_weights_that_do_not_match_the_declared_preset(tmp_path):
    tiny = SDNet("tiny")
    compact_info = CheckpointInfo.for_model(get_preset("compact")).to_dict()
    path = _write_raw(tmp_path / "liar.safetensors", tiny.state_dict(), compact_info)
    with pytest.raises(CheckpointError, match="do not match the 'compact' preset") as exc:
        load_checkpoint(path)
    assert "of another shape" in str(exc.value)
    # a missing tensor is named
    state = dict(tiny.state_dict())
    del state["decomposer.mask_head.weight"]
    tiny_info = CheckpointInfo.for_model(get_preset("tiny")).to_dict()
    path = _write_raw(tmp_path / "missing.safetensors", state, tiny_info)
    with pytest.raises(CheckpointError, match="missing .*mask_head"):
        load_checkpoint(path)


def test_expected_preset_mismatch(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, but a 'paper' model"):
        load_checkpoint(path, expected_preset="paper")
    assert load_checkpoint(path, expected_preset="tiny")[1].preset == "tiny"


def test_corrupt_or_future_metadata(tmp_path):
    state = SDNet("tiny").state_dict()
    good = CheckpointInfo.for_model(get_preset("tiny")).to_dict()
    with pytest.raises(CheckpointError, match="version"):
        read_checkpoint_info(_write_raw(tmp_path / "future.safetensors", state, good, "99"))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint_info(_write_raw(tmp_path / "json.safetensors", state, "{not json"))
    bad = dict(good, model_config={**good["model_config"], "image_size": 63})
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint_info(_write_raw(tmp_path / "cfg.safetensors", state, bad))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint_info(_write_raw(tmp_path / "list.safetensors", state, "[1, 2]"))


def test_truncated_file_is_refused(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, _info(model))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(cut)


def test_module_does_not_unpickle():
    source = Path(checkpoint_module.__file__).read_text()
    assert "torch.load" not in source and "pickle" not in source.replace("unpickles", "")
