"""The Triton backend: dropkit's stream and dropout kernels for CUDA tensors.

The kernels implement the philox-v1 stream of :mod:`dropkit.rng` word for word, so a mask is
the same on the GPU as on the CPU. Triton's own ``tl.randint`` also runs Philox, but lays out
key and counter differently; the rounds are therefore written out here. Each program turns
``BLOCK`` consecutive counters ``c = offset + j`` into ``4 * BLOCK`` words (one Philox call per
four elements, never one per element) and interleaves them so that element ``i`` meets word
``w[i]``.

Importing this module raises ImportError when triton is missing; :mod:`dropkit.ops` then warns
once and uses the reference backend. The same kernels run on CPU tensors under
``TRITON_INTERPRET=1``, which is how the tests check them bit for bit against the reference.
"""

from __future__ import annotations

import functools
import sys

import torch
import triton
import triton.language as tl

from dropkit.backends._shared import check_triton_version, opmath_dtype
from dropkit.backends.contract import DEVICE, NOT_PROVIDED, describe
from dropkit.rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, Position

__all__ = [
    "BACKEND",
    "DTYPES",
    "keep_mask",
    "pack_mask",
    "dropout_forward",
    "dropout_backward",
    "load_position",
    "fused_norm",
    "fused_attention",
]

check_triton_version(triton.__version__)

# Stream positions arrive as 0-dim int64 device tensors (DEVICE in BACKEND) and the kernels read
# them from memory: no value travels back to the host, and a launch can be captured in a CUDA graph.
DTYPES = frozenset((torch.float32, torch.float64, torch.bfloat16, torch.float16))

# Philox blocks per program: 4 * BLOCK elements and BLOCK / 2 mask bytes per program.
BLOCK = 256

# Philox constants as constexpr: compiled kernels may only read constexpr globals.
_M0 = tl.constexpr(PHILOX_M0)
_M1 = tl.constexpr(PHILOX_M1)
_W0 = tl.constexpr(PHILOX_W0)
_W1 = tl.constexpr(PHILOX_W1)

# Where the keep-mask comes from / what is written of it (constexpr selectors of _dropout_kernel).
_FROM_STREAM, _FROM_BITS, _FROM_BOOL = 0, 1, 2
_SAVE_NONE, _SAVE_BITS, _SAVE_BOOL = 0, 1, 2
_SAVE = {"seed": _SAVE_NONE, "bits": _SAVE_BITS, "bool": _SAVE_BOOL}
_SOURCE = {"seed": _FROM_STREAM, "bits": _FROM_BITS, "bool": _FROM_BOOL}


@triton.jit
def philox_block(c0, c1, k0, k1):
    """Philox4x32-10 of the counters ``(c0, c1, 0, 0)`` (uint32 tensors) under key ``(k0, k1)``."""
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        # mulhi via umulhi, mullo via the wrapping uint32 product: the two halves of 32x32 -> 64.
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def load_position(seed_ptr, off_ptr):
    """The key words ``(seed_lo, seed_hi)`` and counter words ``(off_lo, off_hi)`` (uint32) of
    the position stored as two int64 scalars (two's-complement bits of the unsigned values)."""
    seed = tl.load(seed_ptr)
    offset = tl.load(off_ptr)
    return ((seed & 0xFFFFFFFF).to(tl.uint32), ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32),
            (offset & 0xFFFFFFFF).to(tl.uint32), ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32))


@triton.jit
def counters(block, off_lo, off_hi):
    """The counter words ``(c mod 2**32, c >> 32)`` of ``c = offset + block`` (block >= 0)."""
    block = block.to(tl.int64)
    b_lo = (block & 0xFFFFFFFF).to(tl.uint32)
    b_hi = (block >> 32).to(tl.uint32)
    c0 = off_lo + b_lo
    carry = (c0 < b_lo).to(tl.uint32)
    return c0, off_hi + b_hi + carry


@triton.jit
def stream_words(first_block, seed_lo, seed_hi, off_lo, off_hi, NBLOCKS: tl.constexpr):
    """Words ``w[4 * first_block .. 4 * (first_block + NBLOCKS))`` in element order."""
    block = first_block + tl.arange(0, NBLOCKS).to(tl.int64)
    c0, c1 = counters(block, off_lo, off_hi)
    w0, w1, w2, w3 = philox_block(c0, c1, seed_lo, seed_hi)
    # join stacks on a new last axis; [j, a, b] flattens to 4j + 2a + b, i.e. w0, w1, w2, w3.
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [4 * NBLOCKS])


@triton.jit
def element_words(index, seed_lo, seed_hi, off_lo, off_hi):
    """Word ``w[index]`` for an arbitrary int64 tensor of element indices (one Philox call each)."""
    c0, c1 = counters(index // 4, off_lo, off_hi)
    w0, w1, w2, w3 = philox_block(c0, c1, seed_lo, seed_hi)
    k = index % 4
    return tl.where(k == 0, w0, tl.where(k == 1, w1, tl.where(k == 2, w2, w3)))


@triton.jit
def pack_bits(keep, NBYTES: tl.constexpr):
    """Pack ``8 * NBYTES`` flags into bytes: flag ``i`` is bit ``i % 8`` of byte ``i // 8``."""
    weights = (1 << tl.arange(0, 8))[None, :]
    return tl.sum(tl.reshape(keep.to(tl.int32), [NBYTES, 8]) * weights, axis=1).to(tl.uint8)


@triton.jit
def unpack_bits(packed, NBYTES: tl.constexpr):
    """Inverse of :func:`pack_bits`: ``8 * NBYTES`` bool flags."""
    bits = (packed.to(tl.int32)[:, None] >> tl.arange(0, 8)[None, :]) & 1
    return tl.reshape(bits, [8 * NBYTES]) != 0


@triton.jit
def upcast(v, OPMATH: tl.constexpr):
    """``v`` in the compute dtype, exactly."""
    if v.dtype == tl.bfloat16:
        # bf16 is the top half of a float32. Moving the bits keeps the conversion exact in the
        # interpreter too, whose own bf16 conversions are approximate.
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(OPMATH)


@triton.jit
def downcast(v, DTYPE: tl.constexpr):
    """Round ``v`` once, to nearest even, to ``DTYPE`` (as torch rounds)."""
    if DTYPE == tl.bfloat16:
        # Round-to-nearest-even on the float32 bits, NaN -> 0x7FC0 as torch does; the interpreter
        # would truncate instead, and the GPU and the interpreter must agree bit for bit.
        b = v.to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DTYPE)


@triton.jit(do_not_specialize=["thr"])
def _dropout_kernel(
    x_ptr,
    y_ptr,
    mask_in_ptr,
    mask_out_ptr,
    scale_ptr,
    n,
    seed_ptr,
    off_ptr,
    thr,
    SOURCE: tl.constexpr,
    SAVE: tl.constexpr,
    WRITE_Y: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * (4 * BLOCK) + tl.arange(0, 4 * BLOCK)
    inside = idx < n
    byte = pid * (BLOCK // 2) + tl.arange(0, BLOCK // 2)
    nbytes = (n + 7) // 8
    if SOURCE == 0:
        seed_lo, seed_hi, off_lo, off_hi = load_position(seed_ptr, off_ptr)
        w = stream_words(pid * BLOCK, seed_lo, seed_hi, off_lo, off_hi, BLOCK)
        # Compared in int64: the threshold reaches 2**32 (p = 1) and the words are unsigned.
        keep = (w.to(tl.int64) >= thr.to(tl.int64)) & inside
    elif SOURCE == 1:
        packed = tl.load(mask_in_ptr + byte, mask=byte < nbytes, other=0)
        keep = unpack_bits(packed, BLOCK // 2) & inside
    else:
        keep = (tl.load(mask_in_ptr + idx, mask=inside, other=0) != 0) & inside
    if WRITE_Y:
        scale = tl.load(scale_ptr)
        x = upcast(tl.load(x_ptr + idx, mask=inside, other=0.0), scale.dtype)
        y = tl.where(keep, x * scale, 0.0)
        tl.store(y_ptr + idx, downcast(y, y_ptr.dtype.element_ty), mask=inside)
    if SAVE == 1:
        tl.store(mask_out_ptr + byte, pack_bits(keep, BLOCK // 2), mask=byte < nbytes)
    elif SAVE == 2:
        tl.store(mask_out_ptr + idx, keep.to(tl.uint8), mask=inside)


@functools.lru_cache(maxsize=64)
def scale_tensor(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``scale`` rounded to ``dtype`` as a 1-element tensor on ``device``.

    Triton passes Python floats as float32; float64 inputs need the scale in float64, so it
    travels as a tensor. Cached, so a training loop does not copy it to the device every step.
    """
    return torch.tensor([scale], dtype=dtype, device=device)


def _launch(
    n: int, device: torch.device, *, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
    mask_in: torch.Tensor | None = None, mask_out: torch.Tensor | None = None, scale: float = 1.0,
    stream: tuple[int | torch.Tensor, int | torch.Tensor] | None = None, threshold: int = 0,
    source: int = _FROM_STREAM, save: int = _SAVE_NONE,
) -> None:
    if n == 0:
        return
    if stream is not None:
        # Positions given as ints (direct calls of this module) become device scalars.
        stream = Position(*stream).on(device)
    dtype = opmath_dtype(x.dtype) if x is not None else torch.float32
    s = scale_tensor(float(scale), dtype, device)
    # Unused pointers still need a tensor of the right device; the constexprs keep them untouched.
    placeholder = s
    grid = (triton.cdiv(n, 4 * BLOCK),)
    _dropout_kernel[grid](
        x if x is not None else placeholder,
        y if y is not None else placeholder,
        mask_in.view(torch.uint8) if mask_in is not None else placeholder,
        mask_out.view(torch.uint8) if mask_out is not None else placeholder,
        s,
        n,
        *(stream if stream is not None else (placeholder, placeholder)),
        int(threshold),
        SOURCE=source,
        SAVE=save,
        WRITE_Y=y is not None,
        BLOCK=BLOCK,
        num_warps=4,
        # No fused multiply-add: every product is rounded on its own, as on the CPU.
        enable_fp_fusion=False,
    )


def fused_attention():
    """The flash-attention kernels with dropout (:mod:`dropkit.backends.triton_attention`)."""
    from dropkit.backends import triton_attention

    return triton_attention


def fused_norm():
    """The fused dropout-add-norm kernels (:mod:`dropkit.backends.triton_norm`)."""
    from dropkit.backends import triton_norm

    return triton_norm


def keep_mask(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool keep-mask of shape (numel,): element ``i`` is kept iff word ``i`` >= ``threshold``."""
    device = torch.device(device) if device is not None else torch.device("cuda")
    mask = torch.empty(numel, dtype=torch.bool, device=device)
    _launch(numel, device, mask_out=mask, stream=(seed, offset), threshold=threshold, save=_SAVE_BOOL)
    return mask


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a flat bool mask into bytes, element ``i`` in bit ``i % 8`` of byte ``i // 8``."""
    flat = mask.reshape(-1).contiguous()
    n = flat.numel()
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8, device=flat.device)
    _launch(n, flat.device, mask_in=flat, mask_out=bits, source=_FROM_BOOL, save=_SAVE_BITS)
    return bits


def dropout_forward(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep, x * scale, 0)`` and what ``storage`` asks to be saved for backward."""
    n = x.numel()
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if storage == "bits":
        saved = torch.empty((n + 7) // 8, dtype=torch.uint8, device=x.device)
    elif storage == "bool":
        saved = torch.empty(n, dtype=torch.bool, device=x.device)
    else:
        saved = torch.empty(0, dtype=torch.uint8, device=x.device)
    _launch(
        n, x.device, x=x, y=y, mask_out=saved, scale=scale, stream=(seed, offset),
        threshold=threshold, save=_SAVE[storage],
    )
    return y, saved


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor,
    threshold: int, scale: float, storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep, grad * scale, 0)``, the mask read from ``saved`` or regenerated."""
    out = torch.empty_like(grad, memory_format=torch.contiguous_format)
    _launch(
        grad.numel(), grad.device, x=grad, y=out, mask_in=saved if storage != "seed" else None,
        scale=scale, stream=(seed, offset), threshold=threshold, source=_SOURCE[storage],
    )
    return out


# The shared-mask kernels (broadcast dims, alpha dropout, DropBlock) live in triton_bcast and the
# normals and Gaussian noise in triton_noise; both build on the kernels above (and import this
# module, which is complete by now). There is no uniform kernel and no redraw shortcut: the
# reference backend draws uniforms on the device, and the shared masks are saved or drawn again.
from dropkit.backends.triton_bcast import (  # noqa: E402
    alpha_backward,
    alpha_forward,
    bcast_dropout_backward,
    bcast_dropout_forward,
    dropblock_backward,
    dropblock_forward,
)
from dropkit.backends.triton_noise import gaussian_apply, normal  # noqa: E402

__all__ += ["bcast_dropout_forward", "bcast_dropout_backward", "alpha_forward", "alpha_backward",
            "dropblock_forward", "dropblock_backward", "normal", "gaussian_apply"]

BACKEND = describe(sys.modules[__name__], "triton", DEVICE, dtypes=DTYPES, max_dims=None,
                   uniform=NOT_PROVIDED, bcast_dropout_redraw=NOT_PROVIDED)
