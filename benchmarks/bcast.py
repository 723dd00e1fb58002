"""Masks with broadcast dims on the native CPU kernel vs the torch-based equivalents, side by side.

For the shapes of issue 14 it prints the median time of dropkit's backend functions (called
directly, wrapped in a small autograd.Function for forward+backward) next to:

- DropPath (row mode) fwd+bwd fp32, (16, 197, 192) and (64, 197, 384): timm's ``drop_path``
  written out (a Bernoulli mask of shape (B, 1, 1) divided by keep, then multiplied);
- Dropout2d (32, 64, 56, 56), DropBlock2d block 7 (32, 64, 56, 56) and LockedDropout
  (64, 32, 512): forward vs ``x.clone()`` and fwd+bwd vs torch.nn.Dropout2d / torchvision's
  ``drop_block2d`` formula written out / a Bernoulli (1, B, H) mask multiplied in.

Run: ``python benchmarks/bcast.py [--repeat R] [--threads T]``. Timings on a shared machine are
noisy; the medians of R runs (after a warm-up) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dropkit.backends import cpu
from dropkit.functional.dropblock import dropblock_gamma
from dropkit.rng import keep_threshold


class _Bcast(torch.autograd.Function):
    """The broadcast-mask kernel as an autograd op, 1 bit per mask entry saved."""

    @staticmethod
    def forward(ctx, x, mask_shape, threshold, scale):
        y, bits = cpu.bcast_dropout_forward(x, mask_shape, 0, 0, threshold, scale, "bits")
        ctx.save_for_backward(bits)
        ctx.args = (mask_shape, threshold, scale)
        return y

    @staticmethod
    def backward(ctx, grad):
        (bits,) = ctx.saved_tensors
        mask_shape, threshold, scale = ctx.args
        return (
            cpu.bcast_dropout_backward(grad, bits, mask_shape, 0, 0, threshold, scale, "bits"),
            None,
            None,
            None,
        )


class _DropBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks, threshold):
        y, bits, scale = cpu.dropblock_forward(x, blocks, 0, 0, threshold, False, "bits")
        ctx.save_for_backward(bits)
        ctx.args = (blocks, threshold, scale)
        return y

    @staticmethod
    def backward(ctx, grad):
        (bits,) = ctx.saved_tensors
        blocks, threshold, scale = ctx.args
        return cpu.dropblock_backward(grad, bits, blocks, 0, 0, threshold, False, scale, "bits"), None, None


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


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
    mask = x.new_empty((1, *x.shape[1:])).bernoulli_(1 - p) / (1 - p)
    return x * mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p, r = 0.1, args.repeat
    t, scale = keep_threshold(p), 1 / (1 - p)
    print(
        f"threads {args.threads}, isa {cpu.current_isa()}, torch {torch.__version__}, median of {r}, p = {p}"
    )
    print(f"{'case':<44} {'dropkit us':>11} {'baseline us':>12} {'ratio':>7}  baseline")

    def row(name: str, ours: float, base: float, what: str) -> None:
        print(f"{name:<44} {ours:>11.0f} {base:>12.0f} {ours / base:>7.2f}  {what}")

    for shape in [(16, 197, 192), (64, 197, 384)]:
        x, g = torch.randn(shape), torch.randn(shape)
        ms = (shape[0], 1, 1)
        ours = median_us(fwd_bwd(lambda v, ms=ms: _Bcast.apply(v, ms, t, scale), x, g), r)
        base = median_us(fwd_bwd(lambda v: timm_drop_path(v, p), x, g), r)
        row(f"DropPath rows fwd+bwd {shape}", ours, base, "timm drop_path")

    shape = (32, 64, 56, 56)
    x, g = torch.randn(shape), torch.randn(shape)
    clone = median_us(lambda: x.clone(), r)
    ms = (32, 64, 1, 1)
    row(
        f"Dropout2d fwd {shape}",
        median_us(lambda: cpu.bcast_dropout_forward(x, ms, 0, 0, t, scale, "bits"), r),
        clone,
        "x.clone()",
    )
    d2 = torch.nn.Dropout2d(p)
    row(
        f"Dropout2d fwd+bwd {shape}",
        median_us(fwd_bwd(lambda v: _Bcast.apply(v, ms, t, scale), x, g), r),
        median_us(fwd_bwd(d2, x, g), r),
        "torch.nn.Dropout2d",
    )
    xc = x.contiguous(memory_format=torch.channels_last)
    row(
        f"Dropout2d fwd channels_last {shape}",
        median_us(lambda: cpu.bcast_dropout_forward(xc, ms, 0, 0, t, scale, "bits"), r),
        median_us(lambda: xc.clone(), r),
        "x.clone()",
    )

    blocks = (7, 7)
    tb = keep_threshold(dropblock_gamma(p, blocks, shape[2:]))
    row(
        f"DropBlock2d b7 fwd {shape}",
        median_us(lambda: cpu.dropblock_forward(x, blocks, 0, 0, tb, False, "bits"), r),
        clone,
        "x.clone()",
    )
    row(
        f"DropBlock2d b7 fwd+bwd {shape}",
        median_us(fwd_bwd(lambda v: _DropBlock.apply(v, blocks, tb), x, g), r),
        median_us(fwd_bwd(lambda v: torchvision_drop_block2d(v, p, 7), x, g), r),
        "torchvision formula",
    )

    shape = (64, 32, 512)
    x, g = torch.randn(shape), torch.randn(shape)
    ms = (1, 32, 512)
    row(
        f"LockedDropout fwd {shape}",
        median_us(lambda: cpu.bcast_dropout_forward(x, ms, 0, 0, t, scale, "bits"), r),
        median_us(lambda: x.clone(), r),
        "x.clone()",
    )
    row(
        f"LockedDropout fwd+bwd {shape}",
        median_us(fwd_bwd(lambda v: _Bcast.apply(v, ms, t, scale), x, g), r),
        median_us(fwd_bwd(lambda v: locked_torch(v, p), x, g), r),
        "bernoulli mask * x",
    )


if __name__ == "__main__":
    main()
