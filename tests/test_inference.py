"""The inference fast path (``napari_sdnet.inference``): precision, the inference copy, outputs.

The agreement test on real data (bf16 vs fp32 masks on the bundled Sunnybrook study with the
bundled model) is what justifies ``precision="auto"`` picking bf16 (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sdnet import api
from napari_sdnet import device as device_module
from napari_sdnet.errors import InputError
from napari_sdnet.inference import (
    decode_latents,
    default_batch_size,
    inference_copy,
    iter_predict,
    predict_slices,
    resolve_precision,
)
from napari_sdnet.model import SDNet
from napari_sdnet.training.losses import hard_dice


def _tiny(seed: int = 0, bn_stats: bool = True) -> SDNet:
    """A tiny SDNet in eval mode whose BatchNorm layers hold non-trivial statistics."""
    torch.manual_seed(seed)
    net = SDNet("tiny")
    if bn_stats:
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _images(n: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 64, 64)).astype(np.float32)


def _eager(net: SDNet, x: np.ndarray):
    """The plain eager forward pass of the model itself (the reference)."""
    with torch.inference_mode():
        out = net(torch.from_numpy(x)[:, None])
    return out.mask[:, 0].numpy(), out.z.numpy(), out.reconstruction[:, 0].numpy()


# ------------------------------------------------------------------------------- precision


def test_resolve_precision(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("BF16", "cpu") == "bf16"
    monkeypatch.setenv("SDNET_NATIVE_BF16", "1")
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision(None, "cpu") == "bf16"
    monkeypatch.setenv("SDNET_NATIVE_BF16", "0")
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(InputError, match="fp16 inference needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="unknown precision 'half'"):
        resolve_precision("half", "cpu")


def test_native_bf16_detection(monkeypatch):
    monkeypatch.delenv("SDNET_NATIVE_BF16", raising=False)
    flags = device_module._cpuinfo_flags()
    found = device_module.cpu_has_native_bf16()
    assert isinstance(found, bool)
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert found  # the CPU says it has it: so must we
    if flags and not flags & set(device_module._BF16_FLAGS):
        assert not found


def test_default_batch_size():
    assert default_batch_size("cpu", "bf16") >= default_batch_size("cpu", "fp32") >= 1
    assert default_batch_size("cuda", "fp16") >= 32


# ------------------------------------------------------------------------ the inference copy


def test_fp32_fast_path_matches_the_eager_model():
    net = _tiny()
    x = _images()
    mask, z, recon = _eager(net, x)
    out = predict_slices(net, x, batch_size=3)  # default fp32: what training validates with
    np.testing.assert_allclose(out.probability, mask, atol=2e-5)
    np.testing.assert_allclose(out.z, z, atol=2e-5)
    # g sees round(M): a pixel at M ~ 0.5 could flip; none does for these inputs
    np.testing.assert_allclose(out.reconstruction, recon, atol=2e-4)
    assert out.probability.dtype == out.z.dtype == out.reconstruction.dtype == np.float32


def test_bf16_is_close_to_fp32():
    net = _tiny()
    x = _images(12)
    ref = predict_slices(net, x, precision="fp32")
    low = predict_slices(net, x, precision="bf16")
    assert low.probability.dtype == np.float32
    assert np.abs(low.probability - ref.probability).mean() < 0.01
    assert np.abs(low.z - ref.z).max() < 0.05
    assert not np.array_equal(low.probability, ref.probability)  # bf16 really ran


def test_outputs_select_the_work():
    net = _tiny()
    x = _images()
    full = predict_slices(net, x)
    mask_only = predict_slices(net, x, outputs=("mask",))
    assert mask_only.z is None and mask_only.reconstruction is None
    np.testing.assert_array_equal(mask_only.probability, full.probability)
    with_z = predict_slices(net, x, outputs=("mask", "z"))
    assert with_z.reconstruction is None
    np.testing.assert_array_equal(with_z.z, full.z)
    recon_only = predict_slices(net, x, outputs="reconstruction")
    assert recon_only.probability is None and recon_only.z is None
    np.testing.assert_allclose(recon_only.reconstruction, full.reconstruction, atol=1e-6)
    with pytest.raises(InputError, match="unknown output"):
        predict_slices(net, x, outputs=("mask", "latent"))
    empty = predict_slices(net, x[:0], outputs=("mask", "z"))
    assert empty.probability.shape == (0, 64, 64) and empty.z.shape == (0, 16)


def test_the_model_itself_is_never_changed():
    net = _tiny().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predict_slices(net, _images(), precision="bf16")
    assert net.training  # mode kept
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # layout untouched (checkpoints need contiguous tensors), BatchNorm still there
    assert all(p.is_contiguous() for p in net.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.decomposer.modules())
    assert all(p.requires_grad for p in net.parameters())


def test_the_copy_follows_the_weights():
    net = _tiny()
    x = _images(4)
    first = inference_copy(net)
    assert inference_copy(net) is first  # cached
    a = predict_slices(net, x).probability
    with torch.no_grad():  # an optimiser step changes weights in place
        net.decomposer.mask_head.bias.add_(1.0)
    assert inference_copy(net) is not first
    b = predict_slices(net, x).probability
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, _eager(net, x)[0], atol=2e-5)
    # BatchNorm statistics (buffers) count too
    net.train()
    with torch.no_grad():
        net.decomposer(torch.from_numpy(x)[:, None])  # updates the running statistics
    net.eval()
    np.testing.assert_allclose(predict_slices(net, x).probability, _eager(net, x)[0], atol=2e-5)


def test_the_copy_is_folded_and_channels_last():
    nets = inference_copy(_tiny())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nets.modules())
    convs = [m for m in nets.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_iter_predict_yields_progress_and_keeps_gradients():
    net = _tiny()
    done = [n for n, _ in iter_predict(net, _images(7), batch_size=3, precision="bf16")]
    assert done == [3, 6, 7]
    gen = iter_predict(net, _images(7), batch_size=2)
    next(gen)
    assert torch.is_grad_enabled()  # suspended generator: the thread keeps gradients
    gen.close()


def test_decode_latents_matches_the_forward_pass():
    net = _tiny()
    x = _images(5)
    full = predict_slices(net, x)
    again = decode_latents(net, full.probability, full.z, batch_size=2)
    np.testing.assert_allclose(again, full.reconstruction, atol=1e-5)


def test_several_structures_match_the_eager_model():
    from napari_sdnet.model import get_preset
    from napari_sdnet.model.presets import STRUCTURES

    torch.manual_seed(1)
    net = SDNet(get_preset("tiny").replace(structures=tuple(STRUCTURES))).eval()
    x = _images(5)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)[:, None])
    out = predict_slices(net, x, batch_size=2)
    c = len(STRUCTURES)
    assert out.probability.shape == (5, c, 64, 64)
    np.testing.assert_allclose(out.probability, ref.mask.numpy(), atol=2e-5)
    np.testing.assert_allclose(out.reconstruction, ref.reconstruction[:, 0].numpy(), atol=2e-4)
    again = decode_latents(net, out.probability, out.z)
    np.testing.assert_allclose(again, out.reconstruction, atol=1e-5)


# ------------------------------------------------------------------------------ the API


def test_segment_precision_and_lazy_reconstruction():
    model = api.Model.from_network(_tiny())
    image = np.random.default_rng(3).random((2, 3, 50, 60)).astype(np.float32) * 100
    spacing = (30.0, 8.0, 4.0, 4.0)
    seg = api.segment(model, image, spacing, precision="fp32")
    assert seg.precision == "fp32"
    assert "model_reconstruction" not in vars(seg)  # not computed yet
    rec = api.reconstruct(model, seg.model_mask, seg.z, precision="fp32")
    np.testing.assert_allclose(seg.model_reconstruction, rec, atol=1e-5)
    assert seg.reconstruction.shape == image.shape
    assert seg.reconstruction_intensity.shape == image.shape
    # mask only: no Z head, no reconstructor
    lean = api.segment(model, image, spacing, precision="fp32", latents=False)
    np.testing.assert_array_equal(lean.mask, seg.mask)
    assert lean.z is None
    with pytest.raises(InputError, match="latents=False"):
        _ = lean.reconstruction
    with pytest.raises(InputError, match="unknown precision"):
        api.segment(model, image, spacing, precision="fp8")
    # given arrays are kept as they are (the constructor is unchanged)
    eager = api.Segmentation(
        mask=seg.mask,
        probability=seg.probability,
        z=seg.z,
        reconstruction=seg.reconstruction,
        grid=seg.grid,
        model_image=seg.model_image,
        model_mask=seg.model_mask,
        model_reconstruction=seg.model_reconstruction,
        spacing=seg.spacing,
    )
    assert eager.model_reconstruction is seg.model_reconstruction


# -------------------------------------------------------------- agreement on real data


@pytest.fixture(scope="module")
def sample_and_model():
    from napari_sdnet.io.nifti import read_nifti
    from napari_sdnet.sample import sunnybrook_study

    if not api.bundled_model_path().is_file():
        pytest.skip("the bundled model is not installed")
    try:
        study = sunnybrook_study()
    except Exception as exc:  # noqa: BLE001 - missing package data
        pytest.skip(f"sample study not available: {exc}")
    return (
        study,
        read_nifti(study.image),
        read_nifti(study.labels),
        api.load_model("bundled", "cpu"),
    )


def test_bf16_masks_agree_with_fp32_on_the_sample_study(sample_and_model):
    """bf16 (what ``auto`` picks on CPUs with native bf16) gives the fp32 masks: Dice >= 0.995
    over all 240 slices of the real study, and the same accuracy against the expert contours."""
    study, vol, gt, model = sample_and_model
    ref = api.segment(model, vol.data, vol.geometry.spacing, precision="fp32", latents=False)
    low = api.segment(model, vol.data, vol.geometry.spacing, precision="bf16", latents=False)
    assert ref.precision == "fp32" and low.precision == "bf16"
    agreement = hard_dice(low.mask.astype(bool), ref.mask.astype(bool))
    assert agreement >= 0.995, agreement
    # against the expert contours (labelled frames only)
    t_z = [(t, z) for z, t in study.labelled_frames()]
    truth = np.stack([gt.data[t, z] == api.MYOCARDIUM for t, z in t_z])
    d_ref = hard_dice(np.stack([ref.mask[t, z] for t, z in t_z]).astype(bool), truth)
    d_low = hard_dice(np.stack([low.mask[t, z] for t, z in t_z]).astype(bool), truth)
    assert abs(d_low - d_ref) <= 0.005, (d_low, d_ref)
    assert d_ref > 0.6  # the bundled model really segments this study


def test_auto_is_a_precision_that_agrees(sample_and_model):
    _, vol, _, model = sample_and_model
    auto = api.segment(model, vol.data[:4], vol.geometry.spacing, latents=False)
    ref = api.segment(model, vol.data[:4], vol.geometry.spacing, precision="fp32", latents=False)
    expected = "bf16" if device_module.cpu_has_native_bf16() else "fp32"
    assert auto.precision == expected
    assert hard_dice(auto.mask.astype(bool), ref.mask.astype(bool)) >= 0.995


# -------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16", "fp32"])
def test_cuda_path_agrees_with_the_cpu(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    net = _tiny()
    x = _images(40)
    ref = predict_slices(net, x, precision="fp32")
    gpu = predict_slices(net.cuda(), x, batch_size=16, precision=precision)
    assert gpu.probability.dtype == np.float32 and gpu.probability.shape == ref.probability.shape
    assert np.abs(gpu.probability - ref.probability).mean() < 0.01
    assert np.abs(gpu.z - ref.z).max() < 0.05
    assert resolve_precision("auto", "cuda") == "fp16"
    # the model on the GPU is left as it was
    assert all(p.is_cuda and p.is_contiguous() for p in net.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_segment_releases_memory():
    model = api.Model.from_network(_tiny().cuda())
    image = np.random.default_rng(0).random((3, 4, 70, 70)).astype(np.float32)
    api.segment(model, image, (1, 1, 4.0, 4.0))  # warm the copy and the allocator
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    seg = api.segment(model, image, (1, 1, 4.0, 4.0))
    assert seg.precision == "fp16" and seg.reconstruction.shape == image.shape
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= base + 1024 * 1024
