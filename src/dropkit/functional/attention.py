"""Scaled dot-product attention with the attention-probability dropout on dropkit's stream.

Attention dropout (Vaswani et al., "Attention Is All You Need", NeurIPS 2017, section 5.4)
zeroes attention probabilities: ``O = dropout(softmax(Q K^T * scale + M)) V``. It is the
largest dropout tensor of a transformer, ``(batch, heads, L, S)`` per layer, and torch draws it
from its own generator inside ``F.scaled_dot_product_attention``. Here the mask is philox-v1
(docs/rng.md) over the logical shape ``(*batch, heads, L, S)``: element ``i`` of that row-major
tensor meets stream word ``i``, whatever kernel computes the attention.

The CPU path is one autograd.Function: the forward keeps the softmax output ``P`` and the
packed keep-mask (1 bit per probability) for backward, never the dropped probabilities, and
recomputes them in backward with one pass of the native dropout kernel. CUDA tensors go to the
Triton flash-attention kernel (dropkit.backends.triton_attention), which stores no mask at all.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from dropkit import _dtensor, _torch, ops
from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.rng import keep_threshold

__all__ = ["scaled_dot_product_attention", "attention_on_stream"]


def _check_tensor(value: object, name: str) -> torch.Tensor:
    check_floating(value, name)  # a dense floating-point tensor
    if value.dim() < 2:
        raise ValueError(f"{name} must have shape (..., L, E), got {tuple(value.shape)}")
    return value


def _check(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> float:
    """Validate the arguments once; returns ``dropout_p`` as a float."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(t, name)
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"query, key, value need one dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key need the same size E, got {query.shape[-1]}, {key.shape[-1]}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must share the length S, got {key.shape[-2]}, {value.shape[-2]}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {enable_gqa!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number or None, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
        if is_causal:
            raise ValueError("pass either attn_mask or is_causal=True, not both (as torch does)")
    if enable_gqa and query.dim() >= 3 and key.dim() >= 3:
        hq, hk = query.shape[-3], key.shape[-3]
        if hk == 0 or hq % hk or key.shape[-3] != value.shape[-3]:
            raise ValueError(f"enable_gqa needs query heads ({hq}) to be a multiple of key heads ({hk})")
    return check_p(dropout_p, "dropout_p")


def _expand(query, key, value, enable_gqa, mask_batch=()):
    """q, k, v broadcast to one batch shape (GQA heads repeated) and that logical shape."""
    if enable_gqa and query.dim() >= 3 and query.shape[-3] != key.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2], mask_batch)
    query = query.expand(*batch, *query.shape[-2:])
    key = key.expand(*batch, *key.shape[-2:])
    value = value.expand(*batch, *value.shape[-2:])
    return query, key, value, tuple(batch)


_drop = ops.dropout_forward  # (where(keep, p * scale, 0), saved), no autograd of its own
_drop_grad = ops.dropout_backward


class _Attention(torch.autograd.Function):
    """``O = dropout(softmax(Q K^T * scale + M)) V`` on ``(B, L, E)`` tensors, saving P and 1 bit per P.

    ``mask`` is None, a bool tensor (True = attend) or a float tensor, either broadcastable to
    ``shape = (*batch, L, S)``; ``causal`` is top-left aligned, as torch's ``is_causal``.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, shape, causal, scale, threshold, drop_scale, seed, offset):
        b, length, _ = q.shape
        s_len = k.shape[1]
        # One matmul writes the scaled scores; masks are applied in place on the logical view.
        scores = torch.baddbmm(q.new_empty(()).expand(b, length, s_len), q, k.transpose(1, 2), beta=0.0,
                               alpha=scale)
        view = scores.view(shape)
        dead = None
        if causal:
            upper = torch.ones(length, s_len, dtype=torch.bool, device=q.device).triu_(1)
            view.masked_fill_(upper, float("-inf"))
        elif mask is not None and mask.dtype == torch.bool:
            view.masked_fill_(~mask, float("-inf"))
            dead = ~mask.any(-1, keepdim=True)
        elif mask is not None:
            view.add_(mask)
            dead = view.amax(-1, keepdim=True) == float("-inf")
        probs = torch.softmax(scores, dim=-1)
        del scores, view
        if dead is not None and bool(dead.any()):
            # A row with nothing to attend to gives zeros, not NaN (torch's safe softmax).
            probs.view(shape).masked_fill_(dead, 0.0)
        dropped, saved = _drop(probs, seed, offset, threshold, drop_scale, "bits")
        out = torch.bmm(dropped, v)
        ctx.save_for_backward(q, k, v, probs, saved)
        ctx.args = (seed, offset, threshold, drop_scale)
        ctx.scale, ctx.shape = scale, shape
        ctx.mask_shape = mask.shape if mask is not None and mask.requires_grad else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, probs, saved = ctx.saved_tensors
        seed, offset, threshold, drop_scale = ctx.args
        grad_out = grad_out.contiguous()
        grad_q = grad_k = grad_v = grad_mask = None
        if ctx.needs_input_grad[2]:
            # The dropped probabilities are regenerated from P and the saved bits, not stored.
            dropped, _ = _drop(probs, seed, offset, threshold, drop_scale, "seed")
            grad_v = torch.bmm(dropped.transpose(1, 2), grad_out)
            del dropped
        grad_dropped = torch.bmm(grad_out, v.transpose(1, 2))
        grad_probs = _drop_grad(grad_dropped, saved, seed, offset, threshold, drop_scale, "bits")
        del grad_dropped
        grad_scores = _torch.softmax_backward(grad_probs, probs, -1)
        del grad_probs
        if ctx.mask_shape is not None:
            grad_mask = grad_scores.view(ctx.shape).sum_to_size(ctx.mask_shape)
        if ctx.needs_input_grad[0]:
            grad_q = torch.bmm(grad_scores, k) * ctx.scale if ctx.scale != 1.0 else torch.bmm(grad_scores, k)
        if ctx.needs_input_grad[1]:
            grad_k = torch.bmm(grad_scores.transpose(1, 2), q)
            if ctx.scale != 1.0:
                grad_k.mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_mask, None, None, None, None, None, None, None


def _flat(t: torch.Tensor, batch: tuple[int, ...]) -> torch.Tensor:
    return t.reshape(math.prod(batch), *t.shape[-2:]).contiguous()


def _sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    stream: object,
) -> torch.Tensor:
    """Attention with dropout drawn from ``stream``; arguments already checked.

    It reserves one word per element of the logical ``(*batch, Hq, L, S)`` probabilities.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    threshold = keep_threshold(dropout_p)
    drop_scale = 0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p)
    mask_batch = attn_mask.shape[:-2] if attn_mask is not None else ()
    if ops.fuses_attention(query, key, value, attn_mask, enable_gqa):
        words = query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2]
        seed, offset = stream.take(words)
        return ops.attention(query, key, value, attn_mask, is_causal, scale, threshold, drop_scale, seed,
                             offset)
    q, k, v, batch = _expand(query, key, value, enable_gqa, mask_batch)
    length, s_len = q.shape[-2], k.shape[-2]
    seed, offset = stream.take(math.prod(batch) * length * s_len)
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        attn_mask = attn_mask.to(q.dtype)
    out = _Attention.apply(
        _flat(q, batch), _flat(k, batch), _flat(v, batch), attn_mask, (*batch, length, s_len), is_causal,
        float(scale), threshold, drop_scale, seed, offset,
    )
    return out.view(*batch, length, value.shape[-1])


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    enable_gqa: bool = False,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Scaled dot-product attention whose attention dropout is drawn from dropkit's stream.

    .. math::
        O = \mathrm{dropout}_p\left(\mathrm{softmax}\left(Q K^\top \cdot \mathrm{scale} + M\right)\right) V

    with the arguments and semantics of ``torch.nn.functional.scaled_dot_product_attention``:
    ``scale`` defaults to ``1 / sqrt(E)``; a bool ``attn_mask`` marks the positions that may be
    attended to (True), a float one is added to the scores; ``is_causal=True`` masks ``j > i``
    (top-left aligned); ``enable_gqa=True`` lets key/value have fewer heads, each shared by
    ``Hq / H`` query heads. A row with nothing to attend to gives zeros. With ``dropout_p = 0``
    this is torch's function itself. Otherwise element ``i`` of the row-major logical tensor
    ``(*batch, Hq, L, S)`` of probabilities is kept iff stream word ``w[i] >= round(p * 2**32)``
    and kept probabilities are scaled by ``1 / (1 - p)`` (docs/rng.md), so the output is
    ``(softmax(...) * keep / (1 - p)) V`` on every backend.

    Args:
        query: ``(*batch, Hq, L, E)``.
        key: ``(*batch, H, S, E)``.
        value: ``(*batch, H, S, Ev)``.
        attn_mask: None, or a bool or float tensor broadcastable to ``(*batch, Hq, L, S)``.
        dropout_p: probability of dropping an attention probability, in [0, 1]. Like torch's,
            this function has no training flag: pass 0 in evaluation.
        is_causal: apply a causal mask (cannot be combined with ``attn_mask``).
        scale: the score scale; None for ``1 / sqrt(E)``.
        enable_gqa: allow grouped-query attention (fewer key/value heads).
        seed: the stream's 64-bit seed; None draws one from ``generator`` (torch's default
            generator if None).
        offset: the stream offset, in 4-word blocks.
        generator: the generator seeds are drawn from when ``seed`` is None.

    Shape:
        query ``(N, ..., Hq, L, E)``, key ``(N, ..., H, S, E)``, value ``(N, ..., H, S, Ev)``.
        Output: ``(N, ..., Hq, L, Ev)``.

    Examples:
        >>> import dropkit
        >>> q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
        >>> out = scaled_dot_product_attention(q, k, v, dropout_p=0.25, seed=7)
        >>> keep = dropkit.dropout_mask((2, 3, 4, 6), 0.25, seed=7)
        >>> probs = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
        >>> torch.allclose(out, (probs * keep / 0.75) @ v, atol=1e-5)
        True
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        >>> torch.equal(scaled_dot_product_attention(q, k, v, is_causal=True), ref)
        True
    """
    p = _check(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    stream = open_stream(seed, offset, generator, query.device)
    return _attend(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, stream)


def attention_on_stream(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    stream: object,
) -> torch.Tensor:
    """:func:`scaled_dot_product_attention` drawing from a module's ``stream`` (checks included).

    Example:
        >>> from dropkit.rng import Stream
        >>> q = torch.randn(1, 2, 3, 4)
        >>> s = Stream(5)
        >>> out = attention_on_stream(q, q, q, None, 0.5, False, None, False, s)
        >>> s.words  # one word per probability: 1 * 2 * 3 * 3
        18
    """
    p = _check(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _attend(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, stream)


def _attend(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, stream) -> torch.Tensor:
    if type(query) is not torch.Tensor and p > 0.0 and _dtensor.is_dtensor(query):
        return _dtensor.attention(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, stream)
    if p == 0.0:  # torch's own function: nothing drawn, results bit for bit torch's
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    return _sdpa(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, stream)
