"""Tests of the SDNet networks and presets (CPU, tiny preset except for shape checks)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sdnet.errors import InputError
from napari_sdnet.model import (
    PRESETS,
    ModelConfig,
    SDNet,
    SDNetOutput,
    binarise,
    build_model,
    count_parameters,
    get_preset,
)

PAPER_PARAMS = 40_486_861  # all four networks (decomposer 37,435,569)


def _images(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return torch.rand(batch, 1, s, s, generator=gen) * 2 - 1



@pytest.fixture(scope="module")
def tiny() -> SDNet:
    torch.manual_seed(0)
    return SDNet("tiny")


def _check_output(out: SDNetOutput, cfg: ModelConfig, batch: int) -> None:
    s = cfg.image_size
    assert out.mask.shape == (batch, 1, s, s)
    assert out.mask_logits.shape == (batch, 1, s, s)
    assert out.z.shape == (batch, cfg.z_dim)
    assert out.reconstruction.shape == (batch, 1, s, s)
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    assert 0 <= out.z.min() and out.z.max() <= 1
    assert -1 <= out.reconstruction.min() and out.reconstruction.max() <= 1
    torch.testing.assert_close(torch.sigmoid(out.mask_logits), out.mask)


@pytest.mark.parametrize("name", ["tiny", "compact"])
def test_output_shapes_and_ranges(name: str) -> None:
    model = SDNet(name)
    cfg = model.config
    out = model(_images(cfg))
    _check_output(out, cfg, 2)
    p = cfg.discriminator_map_size()
    assert model.mask_discriminator(out.mask).shape == (2, 1, p, p)
    assert model.image_discriminator(out.reconstruction).shape == (2, 1, p, p)


def test_paper_preset_shapes_and_size() -> None:
    cfg = get_preset("paper")
    assert cfg.image_size == 224 and cfg.unet_widths == (64, 128, 256, 512, 1024)
    assert cfg.bottleneck_size == 14 and cfg.z_conv_widths == (256, 64)
    assert cfg.z_dense_width == 32 and cfg.z_dim == 16
    assert cfg.recon_width == 9 and cfg.recon_res_blocks == 3 and cfg.recon_final_kernel == 7
    assert cfg.discriminator_map_size() == 28
    torch.manual_seed(0)
    model = SDNet(cfg).eval()
    assert count_parameters(model) == PAPER_PARAMS  # 40.5 M: "tens of millions"
    with torch.inference_mode():
        out = model(_images(cfg, batch=1))
        _check_output(out, cfg, 1)
        assert model.mask_discriminator(out.mask).shape == (1, 1, 28, 28)
        assert model.image_discriminator(out.reconstruction).shape == (1, 1, 28, 28)


def test_compact_preset_is_small() -> None:
    cfg = get_preset("compact")
    assert cfg.field_of_view_mm > 210  # keeps the whole heart in view (see presets.py)
    model = SDNet(cfg)
    assert count_parameters(model) * 4 < 10 * 2**20  # float32 weights, all four networks
    assert cfg.unet_widths[0] < 64 and cfg.recon_width == 9


def test_discriminator_map_sizes_per_preset() -> None:
    assert {n: c.discriminator_map_size() for n, c in PRESETS.items()} == {
        "paper": 28,
        "compact": 16,
        "tiny": 8,
    }


def test_binarise_values_and_gradient() -> None:
    m = torch.tensor([0.1, 0.49, 0.51, 0.9], requires_grad=True)
    b = binarise(m)
    assert b.tolist() == [0.0, 0.0, 1.0, 1.0]
    (b * torch.arange(4.0)).sum().backward()
    assert m.grad is not None and m.grad.tolist() == [0.0, 1.0, 2.0, 3.0]
    hard = torch.tensor([0.0, 1.0])
    assert torch.equal(binarise(hard), hard)


def test_reconstruction_loss_reaches_mask_head(tiny: SDNet) -> None:
    tiny.train()
    tiny.zero_grad(set_to_none=True)
    x = _images(tiny.config)
    out = tiny(x)
    torch.nn.functional.l1_loss(out.reconstruction, x).backward()
    grad = tiny.decomposer.mask_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # The discriminators are not part of this graph.
    assert all(p.grad is None for p in tiny.discriminator_parameters())
    tiny.zero_grad(set_to_none=True)


def test_reconstructor_sees_binarised_mask(tiny: SDNet) -> None:
    tiny.eval()
    x = _images(tiny.config)
    with torch.no_grad():
        mask, z = tiny.encode(x)
        rec = tiny.decode(mask, z)
        torch.testing.assert_close(rec, tiny.reconstructor(torch.round(mask), z))
        torch.testing.assert_close(tiny(x).reconstruction, rec)


def test_decode_accepts_zero_mask_and_zero_z(tiny: SDNet) -> None:
    cfg = tiny.config
    s = cfg.image_size
    tiny.eval()
    with torch.inference_mode():
        img = tiny.decode(torch.zeros(3, 1, s, s), torch.zeros(3, cfg.z_dim))
    assert img.shape == (3, 1, s, s) and torch.isfinite(img).all()


def test_runs_under_autocast(tiny: SDNet) -> None:
    tiny.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(_images(tiny.config))
        scores = tiny.image_discriminator(out.reconstruction)
    assert torch.isfinite(out.reconstruction.float()).all() and torch.isfinite(scores).all()


def test_wrong_input_shape_is_input_error(tiny: SDNet) -> None:
    with pytest.raises(InputError, match="64, 64"):
        tiny.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputError, match="Z must have shape"):
        tiny.decode(torch.zeros(1, 1, 64, 64), torch.zeros(1, 3))


def test_parameter_groups_partition_the_model(tiny: SDNet) -> None:
    gen = {id(p) for p in tiny.generator_parameters()}
    disc = {id(p) for p in tiny.discriminator_parameters()}
    assert gen.isdisjoint(disc)
    assert gen | disc == {id(p) for p in tiny.parameters()}


def test_determinism_with_seed() -> None:
    torch.manual_seed(0)
    a = build_model("tiny").state_dict()
    torch.manual_seed(0)
    b = build_model("tiny").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_glorot_init_zero_biases(tiny: SDNet) -> None:
    assert torch.count_nonzero(tiny.decomposer.mask_head.bias) == 0
    torch.manual_seed(0)
    default = SDNet(get_preset("tiny").replace(weight_init="pytorch"))
    assert torch.count_nonzero(default.decomposer.mask_head.bias) > 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_round_trip(name: str) -> None:
    cfg = get_preset(name)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict(data).to_dict() == data
    assert hash(ModelConfig.from_dict(data)) == hash(cfg)


def test_config_errors() -> None:
    with pytest.raises(InputError, match="unknown keys: bogus"):
        ModelConfig.from_dict({**get_preset("tiny").to_dict(), "bogus": 1})
    with pytest.raises(InputError, match="divisible"):
        get_preset("paper").replace(image_size=200)
    with pytest.raises(InputError, match="base_filters"):
        get_preset("paper").replace(base_filters=0)
    with pytest.raises(InputError, match="not valid JSON"):
        ModelConfig.from_json("{")


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(InputError, match="paper, compact, tiny"):
        get_preset("huge")
    with pytest.raises(InputError):
        SDNet("huge")


def test_state_dict_loads_into_fresh_model(tiny: SDNet) -> None:
    other = SDNet(ModelConfig.from_dict(tiny.config.to_dict()))
    other.load_state_dict(tiny.state_dict())
    x = _images(tiny.config)
    tiny.eval()
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x).reconstruction, tiny(x).reconstruction)
