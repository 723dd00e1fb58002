"""The layers with broadcast masks (and the noise layers) against torch-based equivalents, side by side.

For the shapes of issue 14 it prints median times of dropkit's public layers (seeded, as
``patch(model, seed=0)`` makes them), the baseline, and the ratio, each pair timed in turns:

- DropPath (row mode) fwd+bwd fp32, (16, 197, 192) and (64, 197, 384): timm's ``drop_path``
  written out (a Bernoulli mask of shape (B, 1, 1) divided by keep, then multiplied);
- Dropout2d (32, 64, 56, 56), DropBlock2d block 7 (32, 64, 56, 56) and LockedDropout
  (64, 32, 512): forward vs ``x.clone()`` and fwd+bwd vs torch.nn.Dropout2d / torchvision's
  ``drop_block2d`` formula written out / a Bernoulli (1, N, C) mask multiplied in;
- GaussianDropout at 2**24 fp32: forward vs ``x.clone()``.

Run: ``python benchmarks/bcast.py [--repeat R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dropkit
from dropkit.ops import backend_name


def paired_us(
    ours: Callable[[], object], base: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median microseconds of two callables timed in turns (drift hits both alike)."""
    ours(), base()
    a, b = [], []
    for _ in range(repeat):
        for fn, out in ((ours, a), (base, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a) * 1e6, statistics.median(b) * 1e6


def fwd_bwd(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        xr = x.detach().requires_grad_()
        layer(xr).backward(g)

    return run


def timm_drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    keep = 1 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


def torchvision_drop_block2d(x: torch.Tensor, p: float, block: int) -> torch.Tensor:
    n, c, h, w = x.shape
    gamma = (p * h * w) / ((block**2) * ((h - block + 1) * (w - block + 1)))
    noise = torch.empty((n, c, h - block + 1, w - block + 1), dtype=x.dtype).bernoulli_(gamma)
    noise = F.pad(noise, [block // 2] * 4, value=0)
    noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(block, block), padding=block // 2)
    noise = 1 - noise
    normalize = noise.numel() / (1e-6 + noise.sum())
    return x * noise * normalize


def locked_torch(x: torch.Tensor, p: float) -> torch.Tensor:
    mask = x.new_empty((1, *x.shape[1:])).bernoulli_(1 - p) / (1 - p)  # one mask per sequence
    return x * mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p, r = 0.1, args.repeat
    print(f"threads {args.threads}, backend {backend_name('cpu')}, torch {torch.__version__}, "
          f"median of {r}, p = {p}")
    print(f"{'case':<44} {'dropkit us':>11} {'baseline us':>12} {'ratio':>7}  baseline")

    def row(name: str, timed: tuple[float, float], what: str) -> None:
        ours, base = timed
        print(f"{name:<44} {ours:>11.0f} {base:>12.0f} {ours / base:>7.2f}  {what}")

    for shape in [(16, 197, 192), (64, 197, 384)]:
        x, g = torch.randn(shape), torch.randn(shape)
        layer = dropkit.DropPath(p, seed=0)
        timm = fwd_bwd(lambda v: timm_drop_path(v, p), x, g)
        row(f"DropPath rows fwd+bwd {shape}", paired_us(fwd_bwd(layer, x, g), timm, r), "timm drop_path")

    shape = (32, 64, 56, 56)
    x, g = torch.randn(shape), torch.randn(shape)
    d2 = dropkit.Dropout2d(p, seed=0)
    row(f"Dropout2d fwd {shape}", paired_us(lambda: d2(x), lambda: x.clone(), r), "x.clone()")
    row(f"Dropout2d fwd+bwd {shape}",
        paired_us(fwd_bwd(d2, x, g), fwd_bwd(torch.nn.Dropout2d(p), x, g), r), "torch.nn.Dropout2d")
    xc = x.contiguous(memory_format=torch.channels_last)
    row(f"Dropout2d fwd channels_last {shape}", paired_us(lambda: d2(xc), lambda: xc.clone(), r), "x.clone()")

    block = dropkit.DropBlock2d(p, 7, seed=0)
    row(f"DropBlock2d b7 fwd {shape}", paired_us(lambda: block(x), lambda: x.clone(), r), "x.clone()")
    row(f"DropBlock2d b7 fwd+bwd {shape}",
        paired_us(fwd_bwd(block, x, g), fwd_bwd(lambda v: torchvision_drop_block2d(v, p, 7), x, g), r),
        "torchvision formula")

    shape = (64, 32, 512)
    x, g = torch.randn(shape), torch.randn(shape)
    locked = dropkit.LockedDropout(p, seed=0)
    row(f"LockedDropout fwd {shape}", paired_us(lambda: locked(x), lambda: x.clone(), r), "x.clone()")
    base = fwd_bwd(lambda v: locked_torch(v, p), x, g)
    row(f"LockedDropout fwd+bwd {shape}", paired_us(fwd_bwd(locked, x, g), base, r), "bernoulli mask * x")

    x = torch.randn(2**24)
    gauss = dropkit.GaussianDropout(p, seed=0)
    row("GaussianDropout fwd (2**24,)", paired_us(lambda: gauss(x), lambda: x.clone(), r), "x.clone()")


if __name__ == "__main__":
    main()
