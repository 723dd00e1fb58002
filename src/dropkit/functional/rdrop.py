"""R-Drop (Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021).

Each batch goes through the model twice, so that two different dropout masks give two output
distributions ``P1`` and ``P2``; the loss is the cross-entropy of both plus ``alpha`` times the
symmetric KL divergence between them, which pulls the sub-models dropout samples together.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["rdrop_loss"]


def rdrop_loss(
    logits1: torch.Tensor, logits2: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, *,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""``(CE(l1, y) + CE(l2, y)) / 2 + alpha * (KL(P1 || P2) + KL(P2 || P1)) / 2``.

    Reduction: each cross-entropy is the mean over samples (positions with ``ignore_index``
    excluded); each KL is summed over classes and averaged over samples (all positions). The
    paper's per-sample loss (its eq. 3) is ``CE1 + CE2 + alpha_paper (KL12 + KL21) / 2``, twice
    this loss with ``alpha = alpha_paper / 2``. The authors' released code averages the CE over
    the two passes, as here, but sums the KL over the batch (and tokens) instead of averaging
    it, so its alpha is this ``alpha`` divided by the number of positions.

    Args:
        logits1: logits of the first pass.
        logits2: logits of the second pass (same input, another dropout mask).
        target: class indices.
        alpha: weight of the symmetric KL term, finite and >= 0.
        ignore_index: target value excluded from the cross-entropy.

    Shape:
        logits: (N, C) or (N, C, d_1, ...). target: (N) or (N, d_1, ...). Output: 0-dim.

    Example:
        >>> l1 = torch.tensor([[2.0, 0.0]]); l2 = torch.tensor([[0.0, 2.0]])
        >>> float(rdrop_loss(l1, l1, torch.tensor([0]), 1.0)) == float(F.cross_entropy(l1, torch.tensor([0])))
        True
        >>> float(rdrop_loss(l1, l2, torch.tensor([0]), 0.0)) > 0
        True
    """
    for name, t in (("logits1", logits1), ("logits2", logits2)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', t)!r}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (N, C, ...), got {tuple(t.shape)}")
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"logits1 and logits2 differ in shape: {tuple(logits1.shape)} vs {tuple(logits2.shape)}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha < math.inf:
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha!r}")
    ce = 0.5 * (
        F.cross_entropy(logits1, target, ignore_index=ignore_index)
        + F.cross_entropy(logits2, target, ignore_index=ignore_index)
    )
    log_p1 = F.log_softmax(logits1, dim=1)
    log_p2 = F.log_softmax(logits2, dim=1)
    # KL(P || Q) = sum_c P_c (log P_c - log Q_c), summed over classes, averaged over positions.
    kl12 = (log_p1.exp() * (log_p1 - log_p2)).sum(dim=1).mean()
    kl21 = (log_p2.exp() * (log_p2 - log_p1)).sum(dim=1).mean()
    return ce + float(alpha) * 0.5 * (kl12 + kl21)
