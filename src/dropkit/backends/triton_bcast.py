"""Triton kernels for masks with broadcast dims: scale-and-zero dropout, alpha dropout, DropBlock.

The reduced keep-mask (philox-v1 word ``j`` for mask element ``j``, row-major over the mask
shape, as everywhere) is drawn and bit-packed by :mod:`dropkit.backends.triton`'s stream kernel;
one apply kernel then reads ``x`` in its own layout (up to four merged dims of any strides),
looks up each element's mask bit and writes ``y`` in ``x``'s memory format. The functions and
their results are those of :mod:`dropkit.backends.cpu` and the reference backend, bit for bit.
DropBlock's block mask is built from the seed grid with torch operations on the device (one
max-pool and one count over the reduced mask), then applied by the same kernel.

Importing this module raises ImportError when triton is missing. Under ``TRITON_INTERPRET=1``
the kernels run on CPU tensors, which is how the tests check them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from dropkit.backends import _shared

__all__ = [
    "bcast_dropout_forward",
    "bcast_dropout_backward",
    "alpha_forward",
    "alpha_backward",
    "dropblock_forward",
    "dropblock_backward",
]

APPLY_BLOCK = 1024
_OP_SCALE, _OP_ALPHA = 0, 1
_NEST = 4


@triton.jit
def _bcast_apply_kernel(
    x_ptr, y_ptr, bits_ptr, params_ptr, total,
    s0, s1, s2, s3, xs0, xs1, xs2, xs3, ys0, ys1, ys2, ys3, ms0, ms1, ms2, ms3,
    OP: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inside = i < total
    r = i
    i3 = r % s3
    r = r // s3
    i2 = r % s2
    r = r // s2
    i1 = r % s1
    i0 = r // s1
    xo = i0 * xs0 + i1 * xs1 + i2 * xs2 + i3 * xs3
    yo = i0 * ys0 + i1 * ys1 + i2 * ys2 + i3 * ys3
    mo = i0 * ms0 + i1 * ms1 + i2 * ms2 + i3 * ms3
    byte = tl.load(bits_ptr + mo // 8, mask=inside, other=0).to(tl.int32)
    keep = ((byte >> (mo % 8).to(tl.int32)) & 1) != 0
    first = tl.load(params_ptr)
    x = tb.upcast(tl.load(x_ptr + xo, mask=inside, other=0.0), first.dtype)
    if OP == 0:
        y = tl.where(keep, x * first, 0.0)
    else:
        b = tl.load(params_ptr + 1)
        c = tl.load(params_ptr + 2)
        y = tl.where(keep, x * first + b, c)
    tl.store(y_ptr + yo, tb.downcast(y, y_ptr.dtype.element_ty), mask=inside)


def _nest(x: torch.Tensor, y: torch.Tensor, mask_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    m_strides, acc = [0] * len(mask_shape), 1
    for d in reversed(range(len(mask_shape))):
        m_strides[d] = acc if mask_shape[d] != 1 else 0
        acc *= mask_shape[d]
    dims = [(x.shape[d], x.stride(d), y.stride(d), m_strides[d]) for d in range(x.dim()) if x.shape[d] != 1]
    dims.sort(key=lambda t: -abs(t[2]))
    merged: list[tuple[int, int, int, int]] = []
    for size, xs, ys, ms in dims:
        if merged and merged[-1][1:] == (xs * size, ys * size, ms * size):
            merged[-1] = (merged[-1][0] * size, xs, ys, ms)
        else:
            merged.append((size, xs, ys, ms))
    return [(1, 0, 0, 0)] * (_NEST - len(merged)) + merged


@functools.lru_cache(maxsize=64)
def _params_tensor(params: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The apply kernel's parameters on the device, made once: a copy from the host at every call
    would wait for the device (and could not be recorded in a CUDA graph)."""
    return torch.tensor(params, dtype=dtype, device=device)


def _apply(
    op: int, x: torch.Tensor, bits: torch.Tensor, mask_shape: tuple[int, ...], params: Sequence[float]
) -> torch.Tensor:
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    p = _params_tensor(tuple(float(v) for v in params), _shared.opmath_dtype(x.dtype), x.device)
    nest = _nest(x, y, mask_shape)
    if len(nest) > _NEST:  # more than four dims that do not merge: the same formulas in torch
        mask = _shared.unpack_mask(bits, math.prod(mask_shape)).view(mask_shape)
        x = x.to(p.dtype)
        if op == _OP_SCALE:
            return y.copy_(torch.where(mask, x * p[0], torch.zeros((), dtype=p.dtype, device=x.device)))
        return y.copy_(torch.where(mask, x * p[0] + p[1], p[2]))
    sizes, xs, ys, ms = zip(*nest, strict=True)
    _bcast_apply_kernel[(triton.cdiv(n, APPLY_BLOCK),)](
        x, y, bits, p, n, *sizes, *xs, *ys, *ms, OP=op, BLOCK=APPLY_BLOCK, num_warps=4, enable_fp_fusion=False
    )
    return y


def _draw(
    n: int, seed: int, offset: int, threshold: int, storage: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed reduced mask, and what ``storage`` keeps of it."""
    if storage not in ("bits", "bool", "seed"):
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8, device=device)
    if storage == "bool":
        bools = tb.keep_mask(n, seed, offset, threshold, device)
        return tb.pack_mask(bools), bools
    tb._launch(n, device, mask_out=bits, stream=(seed, offset), threshold=threshold, save=tb._SAVE_BITS)
    return bits, bits if storage == "bits" else torch.empty(0, dtype=torch.uint8, device=device)


def _bits_of(
    saved: torch.Tensor, n: int, seed: int, offset: int, threshold: int, storage: str, device: torch.device
) -> torch.Tensor:
    if storage == "bits":
        return saved.reshape(-1)
    if storage == "bool":
        return tb.pack_mask(saved)
    return _draw(n, seed, offset, threshold, "seed", device)[0]


def bcast_dropout_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep[broadcast], x * scale, +0.0)``, as the CPU backend's ``bcast_dropout_forward``."""
    ms = _shared.check_mask_shape(x.shape, mask_shape)
    bits, saved = _draw(math.prod(ms), seed, offset, threshold, storage, x.device)
    return _apply(_OP_SCALE, x, bits, ms, (scale,)), saved


def bcast_dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``, the mask from ``saved`` or regenerated."""
    ms = _shared.check_mask_shape(grad.shape, mask_shape)
    bits = _bits_of(saved, math.prod(ms), seed, offset, threshold, storage, grad.device)
    return _apply(_OP_SCALE, grad, bits, ms, (scale,))


def alpha_forward(
    x: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int, threshold: int, a: float, b: float,
    fill: float, storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep[broadcast], x * a + b, fill)``: as :func:`dropkit.backends.cpu.alpha_forward`."""
    ms = _shared.check_mask_shape(x.shape, mask_shape)
    bits, saved = _draw(math.prod(ms), seed, offset, threshold, storage, x.device)
    return _apply(_OP_ALPHA, x, bits, ms, (a, b, fill)), saved


def alpha_backward(
    grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int], seed: int, offset: int,
    threshold: int, a: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * a, +0.0)``."""
    return bcast_dropout_backward(grad, saved, mask_shape, seed, offset, threshold, a, storage)


def _dropblock_mask(
    shape: Sequence[int], block_size: Sequence[int], seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, shared_channels: bool, device: torch.device,
) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask on the device: seeds from the Triton stream kernel, blocks by max-pool.

    Seed word ``k`` is element ``k`` of the grid ``(N, C or 1, f - b + 1, ...)``, a seed iff the
    word is below ``threshold``; position ``y`` is dropped iff a seed lies at ``y - b + 1 .. y``
    along every spatial axis (docs/rng.md). The kept count is read back to the host for the scale.
    """
    seed_shape = _shared.dropblock_seed_shape(tuple(shape), tuple(block_size), shared_channels)
    seeds = ~tb.keep_mask(math.prod(seed_shape), seed, offset, threshold, device)
    return _shared.blocks_kept(seeds.view(seed_shape), block_size)


def dropblock_forward(
    x: torch.Tensor, block_size: Sequence[int], seed: int, offset: int, threshold: int,
    shared_channels: bool, storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DropBlock on a batched ``x``: ``(y, saved, scale)``, as the CPU backend's ``dropblock_forward``."""
    if storage not in ("bits", "bool", "seed"):
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    shape, dev = x.shape, x.device
    keep, kept = _dropblock_mask(shape, block_size, seed, offset, threshold, shared_channels, dev)
    scale = _shared.dropblock_scale(keep.numel(), kept)
    bits = tb.pack_mask(keep)
    y = _apply(_OP_SCALE, x, bits, tuple(keep.shape), (_shared.dropblock_applied_scale(scale, x.dtype),))
    empty = torch.empty(0, dtype=torch.uint8, device=x.device)
    return y, bits if storage == "bits" else (keep.reshape(-1) if storage == "bool" else empty), scale


def dropblock_backward(
    grad: torch.Tensor, saved: torch.Tensor, block_size: Sequence[int], seed: int, offset: int,
    threshold: int, shared_channels: bool, scale: float, storage: str,
) -> torch.Tensor:
    """DropBlock's gradient ``where(keep[broadcast], grad * scale, +0.0)``; "seed" rebuilds the mask."""
    ms = _shared.dropblock_mask_shape(grad.shape, shared_channels)
    if storage == "seed":
        keep, _ = _dropblock_mask(
            grad.shape, block_size, seed, offset, threshold, shared_channels, grad.device
        )
        bits = tb.pack_mask(keep)
    elif storage == "bool":
        bits = tb.pack_mask(saved)
    else:
        bits = saved.reshape(-1)
    return _apply(_OP_SCALE, grad, bits, ms, (_shared.dropblock_applied_scale(scale, grad.dtype),))


# Imported last: dropkit.backends.triton imports this module's kernels when it builds its
# BACKEND, so either module can be imported first. The jit kernels read ``tb`` when they compile.
from dropkit.backends import triton as tb  # noqa: E402
