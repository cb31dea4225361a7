"""Measure SDNet presets and compact candidates on this CPU.

For each configuration it reports the parameter count, the float32 weight size (all four
networks, and the generator alone = decomposer + reconstructor, which is what inference needs),
the time of a forward pass on a batch of 16 slices in inference mode (segmentation only =
decomposer, and the full model with reconstruction), the implied time for 240 slices, and the
time of one full training iteration at batch 4 in the reference schedule:

1. generator step on an unlabelled batch: 10 adv(D_M(M)) + 5 L1(g(M, Z), X) + 5 adv(D_X(g(M, Z)))
2. generator step on a labelled batch: 10 Dice + 10 L1(g(M_gt, Z), X) + 1 L1(g(M, Z), X)
   + 10 adv(D_M(M)) + 1 adv(D_X(g(M_gt, Z)))
3. one step of both discriminators (least squares) on real masks/images and the generated ones.

Adam (lr 1e-4, beta1 0.5) for both optimisers. Losses are written inline here (the project's
real losses live in ``napari_sdnet.training``); their cost is negligible next to the networks.

Usage::

    .venv/bin/python benchmarks/bench_model_presets.py            # all configurations
    .venv/bin/python benchmarks/bench_model_presets.py --only compact tiny --repeats 5

Timings are wall-clock minima over ``--repeats`` runs after one warm-up, with
``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_sdnet.model import ModelConfig, SDNet, count_parameters, get_preset

SLICES_PER_VOLUME = 240  # e.g. a short-axis cine: ~10 slices x 24 frames


def candidates() -> dict[str, ModelConfig]:
    """The presets plus a few compact candidates (names: c<size>_b<base>[_<variant>])."""
    paper = get_preset("paper")
    out: dict[str, ModelConfig] = {
        "paper": paper,
        "compact": get_preset("compact"),
        "tiny": get_preset("tiny"),
    }
    small_heads = {"z_conv_widths": (64, 32), "disc_widths": (16, 32, 64, 128)}
    for size, base, variant in [
        (224, 16, "paperheads"),
        (224, 16, ""),
        (224, 8, ""),
        (192, 16, ""),
        (192, 12, ""),
        (192, 8, ""),
        (160, 24, ""),
        (160, 16, "paperheads"),
        (160, 16, ""),
        (160, 12, ""),
        (160, 8, ""),
        (128, 16, ""),
    ]:
        name = f"c{size}_b{base}" + (f"_{variant}" if variant else "")
        extra = {} if variant == "paperheads" else small_heads
        out[name] = paper.replace(name=name, image_size=size, base_filters=base, **extra)
    return out


@dataclass
class Row:
    """One line of the result table."""

    name: str
    size: int
    base: int
    params: int
    gen_params: int
    mb: float
    gen_mb: float
    seg16_s: float
    full16_s: float
    train_s: float
    load: float

    def markdown(self, spacing_mm: float) -> str:
        """Format as a markdown table row."""
        per_volume = self.seg16_s * SLICES_PER_VOLUME / 16
        return (
            f"| {self.name} | {self.size} ({self.size * spacing_mm:.0f} mm) | {self.base} "
            f"| {self.params / 1e6:.2f} M | {self.mb:.1f} / {self.gen_mb:.1f} "
            f"| {self.seg16_s:.3f} / {self.full16_s:.3f} | {per_volume:.1f} "
            f"| {self.train_s:.3f} | {self.load:.1f} |"
        )


HEADER = (
    "| config | input (FoV at 1.37 mm) | base | params | MB all / generator "
    "| batch-16 fwd s: seg / full | 240 slices s (seg) | train iter s (batch 4) | load |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``fn`` after one warm-up call.

    The minimum (not the median) because the 2 cores are shared: other processes only ever make
    a run slower, so the fastest run is the best estimate of the uncontended time.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _adv(scores: torch.Tensor, target: float) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, target))


def _dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 0.1) -> torch.Tensor:
    inter = (pred * target).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def make_train_step(model: SDNet, batch: int) -> Callable[[], None]:
    """A closure running one full training iteration on random data."""
    cfg = model.config
    s = cfg.image_size
    gen = torch.Generator().manual_seed(0)
    x_l = torch.rand(batch, 1, s, s, generator=gen) * 2 - 1
    x_u = torch.rand(batch, 1, s, s, generator=gen) * 2 - 1
    m_l = (torch.rand(batch, 1, s, s, generator=gen) > 0.9).float()
    m_real = (torch.rand(batch, 1, s, s, generator=gen) > 0.9).float()
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=1e-4, betas=(0.5, 0.999))
    d_m, d_x = model.mask_discriminator, model.image_discriminator
    disc_params = list(model.discriminator_parameters())

    def step() -> None:
        model.train()
        for p in disc_params:
            p.requires_grad_(False)
        # 1. unlabelled generator step
        out = model(x_u)
        loss = (
            10 * _adv(d_m(out.mask), 1.0)
            + 5 * F.l1_loss(out.reconstruction, x_u)
            + 5 * _adv(d_x(out.reconstruction), 1.0)
        )
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        fake_mask_u, fake_img_u = out.mask.detach(), out.reconstruction.detach()
        # 2. labelled generator step
        mask, z = model.encode(x_l)
        rec = model.decode(mask, z)
        rec_gt = model.decode(m_l, z)
        loss = (
            10 * _dice_loss(mask, m_l)
            + 10 * F.l1_loss(rec_gt, x_l)
            + F.l1_loss(rec, x_l)
            + 10 * _adv(d_m(mask), 1.0)
            + _adv(d_x(rec_gt), 1.0)
        )
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        # 3. discriminator step (the reference draws fakes from a pool of generated samples)
        for p in disc_params:
            p.requires_grad_(True)
        fake_masks = torch.cat([fake_mask_u, mask.detach()])[:batch]
        fake_imgs = torch.cat([fake_img_u, rec_gt.detach()])[:batch]
        loss_d = (
            _adv(d_m(m_real), 1.0)
            + _adv(d_m(fake_masks), 0.0)
            + _adv(d_x(x_u), 1.0)
            + _adv(d_x(fake_imgs), 0.0)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

    return step


def measure(name: str, cfg: ModelConfig, repeats: int, train_batch: int) -> Row:
    """Build ``cfg`` and time it."""
    torch.manual_seed(0)
    model = SDNet(cfg)
    params = count_parameters(model)
    gen_params = sum(p.numel() for p in model.generator_parameters())
    s = cfg.image_size
    x16 = torch.rand(16, 1, s, s) * 2 - 1

    model.eval()

    def seg() -> None:
        with torch.inference_mode():
            model.encode(x16)

    def full() -> None:
        with torch.inference_mode():
            model(x16)

    seg_s = timed(seg, repeats)
    full_s = timed(full, repeats)
    train_s = timed(make_train_step(model, train_batch), repeats)
    return Row(
        name=name,
        size=s,
        base=cfg.base_filters,
        params=params,
        gen_params=gen_params,
        mb=params * 4 / 2**20,
        gen_mb=gen_params * 4 / 2**20,
        seg16_s=seg_s,
        full16_s=full_s,
        train_s=train_s,
        load=_load(),
    )


def _load() -> float:
    """1-minute load average (nan where unavailable): > threads means contended timings."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a markdown table."""
    configs = candidates()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(configs), help="configs to run")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--paper-repeats", type=int, default=1, help="repeats for 'paper'")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--train-batch", type=int, default=4)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = args.only or list(configs)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, threads={args.threads}, load avg {_load():.2f}"
    )
    print(HEADER)
    for name in names:
        repeats = args.paper_repeats if name == "paper" else args.repeats
        row = measure(name, configs[name], repeats, args.train_batch)
        print(row.markdown(1.37), flush=True)


if __name__ == "__main__":
    main()
