"""Dropout for sequence models: one mask per sequence, and whole embedding rows.

* Locked (variational) dropout, Gal and Ghahramani, "A Theoretically Grounded Application of
  Dropout in Recurrent Neural Networks" (NeurIPS 2016): the same units are dropped at every
  time step, i.e. :func:`dropout` with the time dimension shared. Its mask is
  ``dropout_mask((1, N, C))`` for (T, N, C) inputs and ``dropout_mask((N, 1, C))`` with
  ``batch_first``.
* Embedding dropout (same paper, sec. 4; Merity et al. 2018): whole rows of the embedding
  matrix are dropped, so every occurrence of a dropped word is zeroed in the whole sequence;
  the mask is ``dropout_mask((V, 1))``, one word per vocabulary row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dropkit import _dtensor
from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional._noise import check_rank
from dropkit.functional.dropout import apply_dropout, inverted_scale
from dropkit.rng import keep_threshold

__all__ = [
    "locked_dropout",
    "embedding_dropout",
    "locked_time_dim",
    "apply_locked_dropout",
    "apply_embedding_dropout",
]


def locked_time_dim(ndim: int, batch_first: bool) -> int:
    """The time dimension of a (T, N, C) / (N, T, C) / (T, C) input of rank ``ndim``.

    Example:
        >>> locked_time_dim(3, batch_first=True), locked_time_dim(2, batch_first=True)
        (1, 0)
    """
    return 1 if batch_first and ndim == 3 else 0


def locked_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    batch_first: bool = False, seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Dropout with one mask per sequence, shared over all time steps.

    ``y[t, n, c] = x[t, n, c] * m[n, c] / (1 - p)``.

    Args:
        input: floating-point tensor.
        p: probability of dropping a unit, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        batch_first: input is (N, T, C) instead of (T, N, C).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: (T, N, C), or (N, T, C) with ``batch_first``, or unbatched (T, C). Output: same.

    Example:
        >>> y = locked_dropout(torch.ones(5, 2, 3), 0.5, seed=0)
        >>> bool((y == y[:1]).all())
        True
    """
    check_floating(input)
    p = check_p(p)
    stream = open_stream(seed, offset, generator, input.device)
    return apply_locked_dropout(input, p, training, bool(inplace), bool(batch_first), stream)


def apply_locked_dropout(
    input: torch.Tensor, p: float, training: bool, inplace: bool, batch_first: bool, stream: object,
    name: str = "locked_dropout",
) -> torch.Tensor:
    """The unchecked core of :func:`locked_dropout`: check the rank (errors say ``name``), then
    draw one word per (sample, unit) from ``stream`` in training."""
    layout = "(N, T, C) or (T, C)" if batch_first else "(T, N, C) or (T, C)"
    check_rank(input, (2, 3), layout, name)
    if not training or p == 0.0:
        return input
    shared = (locked_time_dim(input.dim(), batch_first),)
    # One word per (sample, unit): backward draws the mask again rather than keeping it.
    return apply_dropout(input, keep_threshold(p), inverted_scale(p), shared, stream, "seed", inplace)


def embedding_dropout(
    input: torch.Tensor, weight: torch.Tensor, p: float = 0.1, training: bool = True, *,
    padding_idx: int | None = None, scale: bool = True, seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Look up ``input`` in ``weight`` with whole rows (words) of ``weight`` dropped.

    ``E' = E * m[:, None] / (1 - p)`` with ``m_v ~ Bernoulli(1 - p)`` per vocabulary row ``v``
    (without the ``1 / (1 - p)`` when ``scale=False``), then ``F.embedding(input, E')``.

    Args:
        input: integer indices.
        weight: the (V, E) embedding matrix, floating point.
        p: probability of dropping a row, in [0, 1].
        training: plain lookup when False.
        padding_idx: as in torch.nn.functional.embedding.
        scale: divide kept rows by ``1 - p``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(*)`` indices; weight ``(V, E)``. Output: ``(*, E)``.

    Example:
        >>> w = torch.ones(10, 4)
        >>> embedding_dropout(torch.tensor([[1, 1, 2]]), w, 0.5, seed=0).shape
        torch.Size([1, 3, 4])
    """
    check_floating(weight, "weight")
    p = check_p(p)
    if weight.dim() != 2:
        raise ValueError(f"weight must be a (V, E) matrix, got shape {tuple(weight.shape)}")
    if not isinstance(input, torch.Tensor) or input.is_floating_point() or input.is_complex():
        raise TypeError(f"input must be a tensor of integer indices, got {getattr(input, 'dtype', input)!r}")
    stream = open_stream(seed, offset, generator, weight.device)
    return apply_embedding_dropout(input, weight, p, training, padding_idx, bool(scale), stream)


def apply_embedding_dropout(
    input: torch.Tensor, weight: torch.Tensor, p: float, training: bool, padding_idx: int | None, scale: bool,
    stream: object,
) -> torch.Tensor:
    """The unchecked core of :func:`embedding_dropout`: in training, one word per vocabulary row
    from ``stream``, then the lookup."""
    if training and p > 0.0:
        with _dtensor.outside_global_batch():  # a weight: every rank draws its whole mask
            factor = inverted_scale(p) if scale else 1.0
            weight = apply_dropout(weight, keep_threshold(p), factor, (1,), stream, "bits", False)
    return F.embedding(input, weight, padding_idx)
