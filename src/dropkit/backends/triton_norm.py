"""Fused dropout -> residual add -> LayerNorm / RMSNorm in Triton, forward and backward.

One program normalizes one row of ``(M, N)``: it draws the row's keep-mask from the stream,
forms ``h = dropout(x) + residual``, normalizes ``h`` and applies ``weight`` (and ``bias``),
reading ``x`` and ``residual`` once and writing ``y`` and ``h`` once. Unfused, the same work
takes three kernels and three round trips through memory.

For backward it keeps ``h`` (the norm's input, which eager PyTorch keeps too), the per-row
statistics, and the keep-mask as 1 bit per element, or no mask at all with
``mask_storage="seed"``: backward then draws the same words again from ``(seed, offset)``,
which costs arithmetic instead of memory traffic.

Numerics follow the unfused composition on the CPU: the dropout product and the sum are each
rounded once to the input dtype (as dropkit's dropout and torch's add do), and the norm is
computed in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dropkit.backends._shared import opmath_dtype
from dropkit.backends.triton import (
    downcast,
    element_words,
    load_position,
    pack_bits,
    scale_tensor,
    stream_words,
    unpack_bits,
    upcast,
)

__all__ = ["MAX_COLUMNS", "FusedDropoutAddNorm"]

# Rows are held whole in registers; wider rows take the unfused path.
MAX_COLUMNS = 65536


@triton.jit
def _row_keep(row, N, cols, seed_ptr, off_ptr, thr, BLOCK_N: tl.constexpr, ALIGNED: tl.constexpr):
    """The keep-mask of one row: element ``i = row * N + col`` is kept iff ``w[i] >= thr``."""
    k0, k1, c_lo, c_hi = load_position(seed_ptr, off_ptr)
    if ALIGNED:
        # N % 4 == 0: the row starts on a Philox block, one call yields four of its elements.
        w = stream_words(row * (N // 4), k0, k1, c_lo, c_hi, BLOCK_N // 4)
    else:
        w = element_words(row * N + cols, k0, k1, c_lo, c_hi)
    return w.to(tl.int64) >= thr.to(tl.int64)


@triton.jit(do_not_specialize=["thr"])
def _fwd_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, h_ptr, bits_ptr, mean_ptr, rstd_ptr, scale_ptr,
    N, seed_ptr, off_ptr, thr, eps,
    DROPOUT: tl.constexpr, SAVE_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    inside = cols < N
    base = row * N
    scale = tl.load(scale_ptr)
    OPMATH: tl.constexpr = scale.dtype
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    x = upcast(tl.load(x_ptr + base + cols, mask=inside, other=0.0), OPMATH)
    if DROPOUT:
        keep = _row_keep(row, N, cols, seed_ptr, off_ptr, thr, BLOCK_N, ALIGNED) & inside
        x = upcast(downcast(tl.where(keep, x * scale, 0.0), DTYPE), OPMATH)
        if SAVE_BITS:
            byte = tl.arange(0, BLOCK_N // 8)
            tl.store(bits_ptr + row * (BLOCK_N // 8) + byte, pack_bits(keep, BLOCK_N // 8))
    r = upcast(tl.load(r_ptr + base + cols, mask=inside, other=0.0), OPMATH)
    h_low = downcast(x + r, DTYPE)
    tl.store(h_ptr + base + cols, h_low, mask=inside)
    h = tl.where(inside, upcast(h_low, OPMATH), 0.0)
    if RMS:
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
        xhat = h * rstd
    else:
        mean = tl.sum(h, axis=0) / N
        centered = tl.where(inside, h - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / N + eps)
        xhat = centered * rstd
        tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    y = xhat * upcast(tl.load(w_ptr + cols, mask=inside, other=0.0), OPMATH)
    if HAS_BIAS:
        y += upcast(tl.load(b_ptr + cols, mask=inside, other=0.0), OPMATH)
    tl.store(y_ptr + base + cols, downcast(y, DTYPE), mask=inside)


@triton.jit(do_not_specialize=["M", "thr"])
def _bwd_kernel(
    dy_ptr, dh_ptr, h_ptr, w_ptr, mean_ptr, rstd_ptr, bits_ptr, scale_ptr,
    dx_ptr, dr_ptr, dw_ptr, db_ptr,
    M, N, seed_ptr, off_ptr, thr,
    DROPOUT: tl.constexpr, FROM_BITS: tl.constexpr, HAS_DH: tl.constexpr, RMS: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Each program takes rows pid, pid + G, ... and sums its share of dweight / dbias in
    # registers; the host adds the G partial rows.
    # int64 rows keep row * N exact past 2**31 elements.
    pid = tl.program_id(0).to(tl.int64)
    G = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    inside = cols < N
    scale = tl.load(scale_ptr)
    OPMATH: tl.constexpr = scale.dtype
    DTYPE: tl.constexpr = dy_ptr.dtype.element_ty
    w = upcast(tl.load(w_ptr + cols, mask=inside, other=0.0), OPMATH)
    dw = tl.zeros([BLOCK_N], dtype=OPMATH)
    db = tl.zeros([BLOCK_N], dtype=OPMATH)
    for row in range(pid, M, G):
        base = row * N
        h = upcast(tl.load(h_ptr + base + cols, mask=inside, other=0.0), OPMATH)
        dy = upcast(tl.load(dy_ptr + base + cols, mask=inside, other=0.0), OPMATH)
        rstd = tl.load(rstd_ptr + row)
        if RMS:
            xhat = tl.where(inside, h * rstd, 0.0)
        else:
            xhat = tl.where(inside, (h - tl.load(mean_ptr + row)) * rstd, 0.0)
        g = dy * w
        c1 = tl.sum(xhat * g, axis=0) / N
        if RMS:
            dh = (g - xhat * c1) * rstd
        else:
            c2 = tl.sum(g, axis=0) / N
            dh = (g - xhat * c1 - c2) * rstd
        if HAS_DH:
            dh += upcast(tl.load(dh_ptr + base + cols, mask=inside, other=0.0), OPMATH)
        dh_low = downcast(dh, DTYPE)
        tl.store(dr_ptr + base + cols, dh_low, mask=inside)
        if DROPOUT:
            if FROM_BITS:
                byte = tl.arange(0, BLOCK_N // 8)
                keep = unpack_bits(tl.load(bits_ptr + row * (BLOCK_N // 8) + byte), BLOCK_N // 8)
            else:
                # mask_storage="seed": the mask was never stored; draw the same words again.
                keep = _row_keep(row, N, cols, seed_ptr, off_ptr, thr, BLOCK_N, ALIGNED)
            dx = tl.where(keep, upcast(dh_low, OPMATH) * scale, 0.0)
            tl.store(dx_ptr + base + cols, downcast(dx, DTYPE), mask=inside)
        else:
            tl.store(dx_ptr + base + cols, dh_low, mask=inside)
        dw += dy * xhat
        db += dy
    tl.store(dw_ptr + pid * N + cols, dw, mask=inside)
    tl.store(db_ptr + pid * N + cols, db, mask=inside)


def _block_n(n: int) -> int:
    return max(triton.next_power_of_2(n), 8)


def _warps(block_n: int) -> int:
    return min(max(block_n // 512, 1), 16)


class FusedDropoutAddNorm(torch.autograd.Function):
    """Autograd wrapper of the fused kernels; returns ``(y, h)``.

    ``forward(x2d, residual2d, weight, bias, seed, offset, threshold, scale, dropout, rms, eps,
    save_bits)`` with ``x2d`` and ``residual2d`` contiguous ``(M, N)``.
    """

    @staticmethod
    def forward(ctx, x, residual, weight, bias, seed, offset, threshold, scale, dropout, rms, eps, save_bits):
        M, N = x.shape
        block_n = _block_n(N)
        aligned = N % 4 == 0
        opmath = opmath_dtype(x.dtype)
        s = scale_tensor(float(scale), opmath, x.device)
        y = torch.empty_like(x)
        h = torch.empty_like(x)
        save_bits = bool(save_bits and dropout)
        bits = torch.empty((M, block_n // 8) if save_bits else (0,), dtype=torch.uint8, device=x.device)
        mean = torch.empty(M if not rms else 0, dtype=opmath, device=x.device)
        rstd = torch.empty(M, dtype=opmath, device=x.device)
        if M:
            _fwd_kernel[(M,)](
                x, residual, weight, bias if bias is not None else weight, y, h,
                bits if save_bits else s, mean if not rms else rstd, rstd, s,
                N, seed, offset, int(threshold), float(eps),
                DROPOUT=bool(dropout), SAVE_BITS=save_bits, HAS_BIAS=bias is not None, RMS=bool(rms),
                ALIGNED=aligned, BLOCK_N=block_n, num_warps=_warps(block_n),
                # x * scale + residual must round twice, as dropout then add does on the CPU:
                # a fused multiply-add would round once and change h.
                enable_fp_fusion=False,
            )
        ctx.save_for_backward(h, weight, mean, rstd, bits)
        ctx.stream = (seed, offset, int(threshold))
        ctx.flags = (float(scale), bool(dropout), save_bits, bool(rms), bias is not None)
        ctx.set_materialize_grads(False)
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        h, weight, mean, rstd, bits = ctx.saved_tensors
        seed, offset, threshold = ctx.stream
        scale, dropout, from_bits, rms, has_bias = ctx.flags
        M, N = h.shape
        if grad_y is None:
            grad_y = torch.zeros_like(h)
        grad_y = grad_y.contiguous()
        grad_h = grad_h.contiguous() if grad_h is not None else None
        block_n = _block_n(N)
        opmath = opmath_dtype(h.dtype)
        s = scale_tensor(scale, opmath, h.device)
        if h.is_cuda:
            programs = torch.cuda.get_device_properties(h.device).multi_processor_count * 4
        else:
            programs = 4
        G = max(min(M, programs), 1)
        dx = torch.empty_like(h)
        dr = torch.empty_like(h)
        dw = torch.zeros((G, N), dtype=opmath, device=h.device)
        db = torch.zeros((G, N), dtype=opmath, device=h.device)
        if M:
            _bwd_kernel[(G,)](
                grad_y, grad_h if grad_h is not None else grad_y, h, weight,
                mean if not rms else rstd, rstd, bits if from_bits else s, s,
                dx, dr, dw, db,
                M, N, seed, offset, threshold,
                DROPOUT=dropout, FROM_BITS=from_bits, HAS_DH=grad_h is not None, RMS=rms,
                ALIGNED=N % 4 == 0, BLOCK_N=block_n, num_warps=_warps(block_n),
                enable_fp_fusion=False,
            )
        grad_w = dw.sum(0).to(weight.dtype)
        grad_b = db.sum(0).to(weight.dtype) if has_bias else None
        return dx, dr, grad_w, grad_b, None, None, None, None, None, None, None, None
