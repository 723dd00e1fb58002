"""Triton kernels for the stream's normals and for Gaussian dropout / Gaussian noise.

Each program turns ``BLOCK`` Philox blocks into ``4 * BLOCK`` normals: block ``j`` gives the
pairs ``(w0, w1)`` (elements ``4j``, ``4j + 1``) and ``(w2, w3)`` (elements ``4j + 2``,
``4j + 3``), transformed as :func:`dropkit.backends._shared.box_muller` defines it: fixed float64
polynomials and correctly rounded float64 ``/`` and ``sqrt`` (PTX ``div.rn.f64`` /
``sqrt.rn.f64``), launched with ``enable_fp_fusion=False`` so that no product and sum are fused.
The coefficients travel as a float64 tensor: a Python float inside a kernel would be a float32
constant. The fused kernel applies the normals to ``x`` in the same pass; nothing is stored.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from dropkit.backends._shared import (
    LN2_HI,
    LN2_LO,
    NORMAL_C,
    NORMAL_L,
    NORMAL_S,
    SQRT2,
    opmath_dtype,
)
from dropkit.rng import Position

__all__ = ["normal", "gaussian_apply"]

BLOCK = 256
# Coefficient table layout: L (7), S (7), C (7), then LN2_HI, LN2_LO, SQRT2.
_COEFS = (*NORMAL_L, *NORMAL_S, *NORMAL_C, LN2_HI, LN2_LO, SQRT2)
_NL, _NS, _NC = len(NORMAL_L), len(NORMAL_S), len(NORMAL_C)


@functools.lru_cache(maxsize=8)
def _coef_tensor(device: torch.device) -> torch.Tensor:
    return torch.tensor(_COEFS, dtype=torch.float64, device=device)


@triton.jit
def _horner(x, coef_ptr, FIRST: tl.constexpr, N: tl.constexpr):
    """``c[N-1]``, then ``acc * x + c[k]`` down to ``c[0]`` (each product and sum rounded)."""
    acc = x * tl.load(coef_ptr + FIRST + N - 1) + tl.load(coef_ptr + FIRST + N - 2)
    for j in tl.static_range(N - 2):
        acc = acc * x + tl.load(coef_ptr + FIRST + N - 3 - j)
    return acc


@triton.jit
def normal_pair(w1, w2, coef_ptr, NL: tl.constexpr, NS: tl.constexpr, NC: tl.constexpr):
    """The float64 normals ``(z0, z1)`` of the uint32 word pairs ``(w1, w2)``."""
    k1 = (w1 >> 8).to(tl.int64)
    k2 = (w2 >> 8).to(tl.int64)
    # ln u1: a = 2 k1 + 1 = f 2^e, cut exactly from the float64 bits
    bits = (2 * k1 + 1).to(tl.float64).to(tl.int64, bitcast=True)
    e = (bits >> 52) - 1023
    f = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
    big = f > tl.load(coef_ptr + NL + NS + NC + 2)
    f = tl.where(big, f * 0.5, f)
    big_e = (e + big.to(tl.int64) - 25).to(tl.float64)
    s = (f - 1.0) / (f + 1.0)
    z = s * s
    lf = (s + s) + (s * z) * _horner(z, coef_ptr, 0, NL)
    ln_hi = tl.load(coef_ptr + NL + NS + NC)
    ln_lo = tl.load(coef_ptr + NL + NS + NC + 1)
    lnu = big_e * ln_hi + (big_e * ln_lo + lf)
    r = tl.sqrt(lnu * -2.0)
    # cos and sin of 2 pi u2 from the nearest quadrant q and the exact remainder t
    q = (k2 + 2097152) >> 22
    t = (2 * k2 + 1 - (q << 23)).to(tl.float64) * 1.1920928955078125e-07  # 2**-23
    t2 = t * t
    sn = t * _horner(t2, coef_ptr, NL, NS)
    c = _horner(t2, coef_ptr, NL + NS, NC)
    odd = (q & 1) == 1
    neg = (q & 2) == 2
    cos = tl.where(odd, -sn, c)
    sin = tl.where(odd, c, sn)
    cos = tl.where(neg, -cos, cos)
    sin = tl.where(neg, -sin, sin)
    return r * cos, r * sin


@triton.jit
def block_normals(pid, seed_lo, seed_hi, off_lo, off_hi, coef_ptr, NBLOCKS: tl.constexpr,
                  NL: tl.constexpr, NS: tl.constexpr, NC: tl.constexpr):
    """Normals ``4 * pid * NBLOCKS .. 4 * (pid + 1) * NBLOCKS`` in element order (float64)."""
    block = pid.to(tl.int64) * NBLOCKS + tl.arange(0, NBLOCKS).to(tl.int64)
    c0, c1 = counters(block, off_lo, off_hi)
    w0, w1, w2, w3 = philox_block(c0, c1, seed_lo, seed_hi)
    za0, za1 = normal_pair(w0, w1, coef_ptr, NL, NS, NC)
    zb0, zb1 = normal_pair(w2, w3, coef_ptr, NL, NS, NC)
    # [j, i, a] flattens to 4j + 2i + a: za0, za1, zb0, zb1
    return tl.reshape(tl.join(tl.join(za0, zb0), tl.join(za1, zb1)), [4 * NBLOCKS])


@triton.jit
def _normal_kernel(out_ptr, n, seed_ptr, off_ptr, coef_ptr, OUT: tl.constexpr, BLOCK: tl.constexpr,
                   NL: tl.constexpr, NS: tl.constexpr, NC: tl.constexpr):
    pid = tl.program_id(0)
    seed_lo, seed_hi, off_lo, off_hi = load_position(seed_ptr, off_ptr)
    z = block_normals(pid, seed_lo, seed_hi, off_lo, off_hi, coef_ptr, BLOCK, NL, NS, NC)
    idx = pid.to(tl.int64) * 4 * BLOCK + tl.arange(0, 4 * BLOCK)
    tl.store(out_ptr + idx, z.to(OUT), mask=idx < n)


@triton.jit
def _gaussian_kernel(x_ptr, y_ptr, c_ptr, n, seed_ptr, off_ptr, coef_ptr, ADDITIVE: tl.constexpr,
                     OPMATH: tl.constexpr, BLOCK: tl.constexpr, NL: tl.constexpr, NS: tl.constexpr,
                     NC: tl.constexpr):
    pid = tl.program_id(0)
    seed_lo, seed_hi, off_lo, off_hi = load_position(seed_ptr, off_ptr)
    z = block_normals(pid, seed_lo, seed_hi, off_lo, off_hi, coef_ptr, BLOCK, NL, NS, NC).to(OPMATH)
    idx = pid.to(tl.int64) * 4 * BLOCK + tl.arange(0, 4 * BLOCK)
    live = idx < n
    x = tl.load(x_ptr + idx, mask=live, other=0.0)
    xc = upcast(x, OPMATH)
    cz = tl.load(c_ptr) * z
    if ADDITIVE:
        y = xc + cz
    else:
        y = xc * (1.0 + cz)
    tl.store(y_ptr + idx, downcast(y, y_ptr.dtype.element_ty), mask=live)


_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


def normal(
    numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``numel`` standard normals of the stream, as :func:`dropkit.backends.reference.normal`.

    Shape:
        Output: ``(numel,)``.
    """
    device = torch.device(device) if device is not None else torch.device("cuda")
    direct = dtype in _TL
    out = torch.empty(numel, dtype=dtype if direct else torch.float64, device=device)
    if numel:
        position = Position(seed, offset).on(device)
        _normal_kernel[(triton.cdiv(numel, 4 * BLOCK),)](
            out, numel, *position, _coef_tensor(device),
            OUT=_TL[out.dtype], BLOCK=BLOCK, NL=_NL, NS=_NS, NC=_NC, num_warps=4, enable_fp_fusion=False,
        )
    return out if direct else out.to(dtype)


def gaussian_apply(
    x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, c: float, additive: bool
) -> torch.Tensor:
    """``x + c * z`` (``additive``) or ``x * (1 + c * z)`` in one pass, as
    :func:`dropkit.backends.reference.gaussian_apply` rounds it.

    Shape:
        x: ``(*)``; output: same shape (contiguous).
    """
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        dt = opmath_dtype(x.dtype)
        _gaussian_kernel[(triton.cdiv(n, 4 * BLOCK),)](
            x, y, scale_tensor(float(c), dt, x.device), n, *Position(seed, offset).on(x.device),
            _coef_tensor(x.device), ADDITIVE=bool(additive),
            OPMATH=_TL[dt], BLOCK=BLOCK, NL=_NL, NS=_NS, NC=_NC, num_warps=4, enable_fp_fusion=False,
        )
    return y


# Imported last, for the reason given at the end of triton_bcast.py.
from dropkit.backends.triton import counters, downcast, load_position, philox_block, scale_tensor, upcast  # noqa: E402
