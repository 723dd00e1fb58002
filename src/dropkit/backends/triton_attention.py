"""Flash attention with philox-v1 attention dropout, in Triton (forward and backward).

The forward is the online-softmax algorithm of FlashAttention (Dao et al., NeurIPS 2022): for
a block of queries it walks over blocks of keys, keeps the running row maximum ``m`` and sum
``l`` of ``exp(s - m)``, and accumulates ``keep * scale * exp(s - m) @ V``. The normalizer sums
every probability, dropped or not, so the output is ``(softmax(S) * keep / (1 - p)) V``
exactly as on the CPU. Only the row log-sum-exp ``m + log(l)`` is stored.

Dropout: probability ``(z, i, j)`` of the logical ``(Z, L, S)`` tensor (``Z`` = batch x heads,
row-major) is kept iff stream word ``w[(z * L + i) * S + j] >= threshold`` (docs/rng.md), the
words coming from :func:`dropkit.backends.triton.element_words`. The backward kernels
regenerate the same words from ``(seed, offset)`` and the indices: no mask is ever stored.

Backward: ``D_i = dO_i . O_i``; ``dP = keep * scale * dO V^T``; ``dS = P (dP - D)``; one kernel
per key block accumulates ``dK = scale dS^T Q`` and ``dV = (P * keep * scale)^T dO``, another per
query block accumulates ``dQ = scale dS K``, so no atomics are needed.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from dropkit.backends.triton import element_words, load_position
from dropkit.rng import Position

__all__ = ["attention", "supports"]

_NO_MASK, _BOOL_MASK, _FLOAT_MASK = 0, 1, 2


@triton.jit
def _scores(q, k_ptrs, n_idx, m_idx, mask_ptr, msm, msn, m_len, n_len, scale,
            CAUSAL: tl.constexpr, MASK: tl.constexpr, kv_ok):
    """Scaled scores of a (BLOCK_M, BLOCK_N) tile with every mask applied (-inf where masked, and on
    the rows and columns past the ends, whose mask entries are never read)."""
    k = tl.load(k_ptrs, mask=kv_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision="ieee").to(tl.float32) * scale
    allowed = (n_idx[None, :] < n_len) & (m_idx[:, None] < m_len)
    if CAUSAL:
        allowed = allowed & (n_idx[None, :] <= m_idx[:, None])
    if MASK == 1:
        mk = tl.load(mask_ptr + m_idx[:, None] * msm + n_idx[None, :] * msn, mask=allowed, other=0)
        allowed = allowed & (mk != 0)
    if MASK == 2:
        mf = tl.load(mask_ptr + m_idx[:, None] * msm + n_idx[None, :] * msn, mask=allowed, other=0.0)
        s = s + mf.to(tl.float32)
    return tl.where(allowed, s, float("-inf"))


@triton.jit
def _keep(z, m_idx, n_idx, m_len, n_len, seed_lo, seed_hi, off_lo, off_hi, thr):
    """The philox-v1 keep flags of a tile: word ``(z * L + i) * S + j`` against the threshold."""
    index = (z.to(tl.int64) * m_len + m_idx[:, None].to(tl.int64)) * n_len + n_idx[None, :].to(tl.int64)
    w = element_words(index, seed_lo, seed_hi, off_lo, off_hi)
    return w.to(tl.int64) >= thr


@triton.jit(do_not_specialize=["thr"])
def _forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr, heads, msb, msh, msm, msn,
                    m_len, n_len, head_dim, scale, drop_scale,
                    seed_ptr, off_ptr, thr,
                    CAUSAL: tl.constexpr, MASK: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    # The mask may broadcast over batch or heads: its own strides, not z's, address it.
    mask_base = mask_ptr + (z // heads) * msb + (z % heads) * msh
    m_idx = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d_idx = tl.arange(0, BLOCK_D)
    d_ok = d_idx[None, :] < head_dim
    q_ok = (m_idx[:, None] < m_len) & d_ok
    q_off = z * m_len * head_dim + m_idx[:, None] * head_dim + d_idx[None, :]
    q = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
    s_lo, s_hi, o_lo, o_hi = load_position(seed_ptr, off_ptr)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = n_len
    if CAUSAL:
        end = tl.minimum(n_len, (start_m + 1) * BLOCK_M)
    for start_n in range(0, end, BLOCK_N):
        n_idx = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (n_idx[:, None] < n_len) & d_ok
        kv_off = z * n_len * head_dim + n_idx[:, None] * head_dim + d_idx[None, :]
        s = _scores(q, k_ptr + kv_off, n_idx, m_idx, mask_base, msm, msn, m_len, n_len, scale,
                    CAUSAL, MASK, kv_ok)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        # A row with nothing allowed so far keeps max -inf; subtracting 0 keeps exp(-inf) = 0.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp(s - shift[:, None])
        alpha = tl.exp(tl.where(row_max == float("-inf"), float("-inf"), row_max - shift))
        row_sum = row_sum * alpha + tl.sum(p, 1)
        keep = _keep(z, m_idx, n_idx, m_len, n_len, s_lo, s_hi, o_lo, o_hi, thr)
        pd = tl.where(keep, p * drop_scale, 0.0)
        v = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(pd.to(v.dtype), v, input_precision="ieee").to(tl.float32)
        row_max = new_max
    dead = row_sum == 0.0
    out = tl.where(dead[:, None], 0.0, acc / tl.where(dead, 1.0, row_sum)[:, None])
    tl.store(o_ptr + q_off, out.to(o_ptr.dtype.element_ty), mask=q_ok)
    lse = tl.where(dead, float("inf"), row_max + tl.log(tl.where(dead, 1.0, row_sum)))
    tl.store(lse_ptr + z * m_len + m_idx, lse, mask=m_idx < m_len)


@triton.jit
def _tile_grads(q, k_ptrs, v, do, lse, delta, z, m_idx, n_idx, m_len, n_len, mask_ptr, msm, msn,
                scale, drop_scale, s_lo, s_hi, o_lo, o_hi, thr, kv_ok,
                CAUSAL: tl.constexpr, MASK: tl.constexpr):
    """``(P * keep * scale, dS)`` of one tile, recomputed from the row log-sum-exp."""
    s = _scores(q, k_ptrs, n_idx, m_idx, mask_ptr, msm, msn, m_len, n_len, scale, CAUSAL, MASK, kv_ok)
    p = tl.exp(s - lse[:, None])
    keep = _keep(z, m_idx, n_idx, m_len, n_len, s_lo, s_hi, o_lo, o_hi, thr)
    dp = tl.where(keep, tl.dot(do, tl.trans(v), input_precision="ieee").to(tl.float32) * drop_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return tl.where(keep, p * drop_scale, 0.0), ds


@triton.jit(do_not_specialize=["thr"])
def _backward_kv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                        mask_ptr, heads, msb, msh, msm, msn, m_len, n_len, head_dim, scale, drop_scale,
                        seed_ptr, off_ptr, thr,
                        CAUSAL: tl.constexpr, MASK: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_n = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    # The mask may broadcast over batch or heads: its own strides, not z's, address it.
    mask_base = mask_ptr + (z // heads) * msb + (z % heads) * msh
    n_idx = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d_idx = tl.arange(0, BLOCK_D)
    d_ok = d_idx[None, :] < head_dim
    kv_ok = (n_idx[:, None] < n_len) & d_ok
    kv_off = z * n_len * head_dim + n_idx[:, None] * head_dim + d_idx[None, :]
    v = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
    s_lo, s_hi, o_lo, o_hi = load_position(seed_ptr, off_ptr)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    first = 0
    if CAUSAL:
        first = (start_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for start_m in range(first, m_len, BLOCK_M):
        m_idx = start_m + tl.arange(0, BLOCK_M)
        q_ok = (m_idx[:, None] < m_len) & d_ok
        q_off = z * m_len * head_dim + m_idx[:, None] * head_dim + d_idx[None, :]
        q = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
        do = tl.load(do_ptr + q_off, mask=q_ok, other=0.0)
        lse = tl.load(lse_ptr + z * m_len + m_idx, mask=m_idx < m_len, other=float("inf"))
        delta = tl.load(delta_ptr + z * m_len + m_idx, mask=m_idx < m_len, other=0.0)
        pd, ds = _tile_grads(q, k_ptr + kv_off, v, do, lse, delta, z, m_idx, n_idx, m_len, n_len,
                             mask_base, msm, msn, scale, drop_scale, s_lo, s_hi, o_lo, o_hi, thr,
                             kv_ok, CAUSAL, MASK)
        dv += tl.dot(tl.trans(pd).to(do.dtype), do, input_precision="ieee").to(tl.float32)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision="ieee").to(tl.float32)
    tl.store(dk_ptr + kv_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_ok)
    tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_ok)


@triton.jit(do_not_specialize=["thr"])
def _backward_q_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                       mask_ptr, heads, msb, msh, msm, msn, m_len, n_len, head_dim, scale, drop_scale,
                       seed_ptr, off_ptr, thr,
                       CAUSAL: tl.constexpr, MASK: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    # The mask may broadcast over batch or heads: its own strides, not z's, address it.
    mask_base = mask_ptr + (z // heads) * msb + (z % heads) * msh
    m_idx = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d_idx = tl.arange(0, BLOCK_D)
    d_ok = d_idx[None, :] < head_dim
    q_ok = (m_idx[:, None] < m_len) & d_ok
    q_off = z * m_len * head_dim + m_idx[:, None] * head_dim + d_idx[None, :]
    q = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
    do = tl.load(do_ptr + q_off, mask=q_ok, other=0.0)
    lse = tl.load(lse_ptr + z * m_len + m_idx, mask=m_idx < m_len, other=float("inf"))
    delta = tl.load(delta_ptr + z * m_len + m_idx, mask=m_idx < m_len, other=0.0)
    s_lo, s_hi, o_lo, o_hi = load_position(seed_ptr, off_ptr)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = n_len
    if CAUSAL:
        end = tl.minimum(n_len, (start_m + 1) * BLOCK_M)
    for start_n in range(0, end, BLOCK_N):
        n_idx = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (n_idx[:, None] < n_len) & d_ok
        kv_off = z * n_len * head_dim + n_idx[:, None] * head_dim + d_idx[None, :]
        v = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
        k = tl.load(k_ptr + kv_off, mask=kv_ok, other=0.0)
        _, ds = _tile_grads(q, k_ptr + kv_off, v, do, lse, delta, z, m_idx, n_idx, m_len, n_len,
                            mask_base, msm, msn, scale, drop_scale, s_lo, s_hi, o_lo, o_hi, thr,
                            kv_ok, CAUSAL, MASK)
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee").to(tl.float32)
    tl.store(dq_ptr + q_off, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_ok)


def _blocks() -> tuple[int, int]:
    # The interpreter runs every program in Python: small tiles keep the CI tests quick.
    return (16, 16) if os.environ.get("TRITON_INTERPRET") == "1" else (64, 64)


def supports(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
    enable_gqa: bool,
) -> bool:
    """Whether :func:`attention` handles these inputs (else the composite path runs)."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return False
    if query.shape[0] != key.shape[0] or key.shape[:2] != value.shape[:2]:
        return False
    if query.shape[1] != key.shape[1] and not (enable_gqa and query.shape[1] % key.shape[1] == 0):
        return False
    if value.shape[-1] != query.shape[-1] or query.shape[-1] > 256:
        return False
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return attn_mask is None or not attn_mask.requires_grad


def _mask_args(mask: torch.Tensor | None, shape: tuple[int, int, int, int], dtype: torch.dtype):
    """The mask as a 4-D broadcast view (strides 0 where broadcast, no copy) and its kind."""
    if mask is None:
        return None, (shape[1], 0, 0, 0, 0), _NO_MASK
    kind = _BOOL_MASK if mask.dtype == torch.bool else _FLOAT_MASK
    if kind == _FLOAT_MASK and mask.dtype != dtype:
        mask = mask.to(dtype)
    if kind == _BOOL_MASK:
        mask = mask.view(torch.uint8)
    mask = mask.expand(shape)
    return mask, (shape[1], *mask.stride()), kind


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale, threshold, drop_scale, seed, offset):
        n, h, length, dim = q.shape
        s_len = k.shape[2]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        mask_t, strides, kind = _mask_args(mask, (n, h, length, s_len), q.dtype)
        out = torch.empty_like(q)
        lse = torch.empty((n * h, length), dtype=torch.float32, device=q.device)
        block_m, block_n = _blocks()
        block_d = max(16, triton.next_power_of_2(dim))
        # The position as device scalars that the kernels read: no host sync, graph-capturable.
        stream = Position(seed, offset).on(q.device)
        _forward_kernel[(triton.cdiv(length, block_m), n * h)](
            q, k, v, out, lse, mask_t if mask_t is not None else lse, *strides, length, s_len, dim,
            scale, drop_scale, *stream, threshold,
            CAUSAL=causal, MASK=kind, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        )
        ctx.save_for_backward(q, k, v, out, lse, mask_t if mask_t is not None else lse)
        ctx.args = (strides, kind, causal, scale, drop_scale, stream, threshold, block_m, block_n, block_d)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask_t = ctx.saved_tensors
        strides, kind, causal, scale, drop_scale, stream, threshold, block_m, block_n, block_d = ctx.args
        n, h, length, dim = q.shape
        s_len = k.shape[2]
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1).reshape(n * h, length)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (mask_t, *strides, length, s_len, dim, scale, drop_scale, *stream, threshold)
        meta = dict(CAUSAL=causal, MASK=kind, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        _backward_kv_kernel[(triton.cdiv(s_len, block_n), n * h)](
            q, k, v, grad_out, lse, delta, dk, dv, *common, **meta
        )
        _backward_q_kernel[(triton.cdiv(length, block_m), n * h)](
            q, k, v, grad_out, lse, delta, dq, *common, **meta
        )
        return dq, dk, dv, None, None, None, None, None, None, None


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float, threshold: int, drop_scale: float, seed: int | torch.Tensor,
    offset: int | torch.Tensor,
) -> torch.Tensor:
    """Attention with philox-v1 dropout of ``(N, H, L, E)`` tensors (see :func:`supports`).

    ``threshold`` and ``drop_scale`` are dropout's ``round(p * 2**32)`` and ``1 / (1 - p)``;
    ``(seed, offset)`` is the stream position of word 0 of the ``(N, H, L, S)`` probabilities.
    """
    if query.shape[1] != key.shape[1]:
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return _FlashAttention.apply(
        query, key, value, attn_mask, is_causal, float(scale), threshold, float(drop_scale), seed, offset
    )
