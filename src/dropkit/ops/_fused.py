"""Fused kernels a backend may offer: attention with dropout, dropout-add-norm."""

from __future__ import annotations

import torch

from dropkit.ops._dispatch import backend_of, position
from dropkit.ops._inputs import plain


def fuses_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
    enable_gqa: bool,
) -> bool:
    """Whether a backend runs attention with dropout as one kernel for these tensors (Triton).

    Example:
        >>> q = torch.ones(1, 1, 2, 4)
        >>> fuses_attention(q, q, q, None, False)
        False
    """
    if not plain(query, "attention", refuse=False):
        return False
    fused = backend_of(query, "fused_attention").fused_attention
    return fused is not None and fused().supports(query, key, value, attn_mask, enable_gqa)


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
    is_causal: bool, scale: float, threshold: int, drop_scale: float, seed: int | torch.Tensor,
    offset: int | torch.Tensor,
) -> torch.Tensor:
    """The fused attention-with-dropout kernel, where :func:`fuses_attention` says one exists."""
    backend = backend_of(query, "fused_attention")
    seed, offset = position(backend, seed, offset, query.device)
    return backend.fused_attention().attention(
        query, key, value, attn_mask, is_causal, scale, threshold, drop_scale, seed, offset
    )


def fuses_dropout_add_norm(x: torch.Tensor) -> bool:
    """Whether a backend fuses :func:`dropout_add_norm` for ``x`` (Triton, rows that fit).

    Example:
        >>> fuses_dropout_add_norm(torch.ones(2, 4))
        False
    """
    if not plain(x, "dropout_add_norm", refuse=False):
        return False
    fused = backend_of(x, "fused_norm").fused_norm
    return fused is not None and 0 < x.shape[-1] <= fused().MAX_COLUMNS and x.numel() > 0


def dropout_add_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float, active: bool,
    rms: bool, eps: float, save_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused ``(norm(dropout(x) + residual), dropout(x) + residual)`` of contiguous 2-D
    ``(M, N)`` tensors, where :func:`fuses_dropout_add_norm` says a backend fuses it."""
    backend = backend_of(x, "fused_norm")
    seed, offset = position(backend, seed, offset, x.device)
    return backend.fused_norm().FusedDropoutAddNorm.apply(
        x, residual, weight, bias, seed, offset, threshold, scale, active, rms, eps, save_mask
    )
