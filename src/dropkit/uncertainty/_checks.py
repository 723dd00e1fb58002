"""Argument checks for probability tensors, labels and positive scalars."""

from __future__ import annotations

import math
import numbers

import torch


def check_probs(probs: object, ndim: int, layout: str, name: str = "probs") -> torch.Tensor:
    """Check a floating tensor of rank ``ndim`` whose last dimension is a probability vector.

    Entries must be finite, in [0, 1] and sum to 1 over the last dimension within a tolerance
    that allows for float rounding (1e-3 for 16-bit types, 1e-4 otherwise).
    """
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {probs.dtype}")
    if probs.dim() != ndim or probs.shape[-1] < 1 or probs.numel() == 0:
        raise ValueError(f"{name} must have shape {layout} with no empty dimension, got {tuple(probs.shape)}")
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < 0.0 or hi > 1.0 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo}, {hi}]")
    tol = 1e-3 if probs.element_size() <= 2 else 1e-4
    err = float((probs.double().sum(-1) - 1.0).abs().max())
    if err > tol:
        raise ValueError(
            f"{name} must sum to 1 over its last dimension (softmax outputs, not logits); "
            f"the largest deviation is {err:.3g}"
        )
    return probs


def check_labels(labels: object, n: int, num_classes: int) -> torch.Tensor:
    """Check integer class labels of shape (N,) with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (N,), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match probs, got {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0 (or >= 0)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0 or (v == 0.0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v
