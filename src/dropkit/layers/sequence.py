"""LockedDropout and EmbeddingDropout modules on dropkit's stream."""

from __future__ import annotations

import torch
from torch import nn

from dropkit.functional._checks import check_floating, check_p
from dropkit.functional.sequence import apply_embedding_dropout, apply_locked_dropout
from dropkit.layers._base import RateModule, StreamModule

__all__ = ["LockedDropout", "EmbeddingDropout"]


class LockedDropout(RateModule):
    r"""Variational RNN dropout: one mask per sequence, shared over every time step.

    Gal and Ghahramani, NeurIPS 2016. ``y[t, n, c] = x[t, n, c] * m[n, c] / (1 - p)``; identity
    in eval. See :func:`dropkit.functional.locked_dropout`.

    Args:
        p: probability of dropping a unit, in [0, 1]. Default: 0.5.
        batch_first: inputs are (N, T, C). Default: False, (T, N, C).
        inplace: do the operation in place.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (T, N, C) ((N, T, C) with ``batch_first``) or (T, C). Output: same.

    Example:
        >>> y = LockedDropout(0.5, seed=0)(torch.ones(6, 2, 3))
        >>> bool((y == y[0]).all())
        True
    """

    def __init__(
        self, p: float = 0.5, batch_first: bool = False, inplace: bool = False, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, inplace, seed=seed, generator=generator)
        self.batch_first = bool(batch_first)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        stream = self.stream() if self.training and self.p > 0 else None
        return apply_locked_dropout(input, self.p, self.training, self.inplace, self.batch_first, stream,
                                    "LockedDropout")

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}" + self._stream_repr()


class EmbeddingDropout(StreamModule):
    r"""Wrap nn.Embedding and drop whole rows (words) of its matrix in training.

    Gal and Ghahramani, NeurIPS 2016, sec. 4: ``E' = E * m[:, None] / (1 - p)``, one draw per
    vocabulary row, so each dropped word vanishes from the whole batch. Evaluation: the plain
    lookup. See :func:`dropkit.functional.embedding_dropout`.

    Args:
        embedding: the nn.Embedding to wrap (its padding_idx is honoured).
        p: probability of dropping a row, in [0, 1]. Default: 0.1.
        scale: divide kept rows by ``1 - p``. Default: True.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(*)`` integer indices. Output: ``(*, E)``.

    Example:
        >>> m = EmbeddingDropout(nn.Embedding(10, 4), 0.5, seed=0)
        >>> m(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 4])
    """

    def __init__(
        self, embedding: nn.Embedding, p: float = 0.1, scale: bool = True, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"EmbeddingDropout wraps an nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None or embedding.sparse or embedding.scale_grad_by_freq:
            raise ValueError(
                "EmbeddingDropout supports nn.Embedding without max_norm, sparse and scale_grad_by_freq, "
                f"got max_norm={embedding.max_norm}, sparse={embedding.sparse}, "
                f"scale_grad_by_freq={embedding.scale_grad_by_freq}"
            )
        self.embedding = embedding
        self.p = p
        self.scale = bool(scale)

    _checked_attributes = {"p": check_p}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.is_floating_point() or input.is_complex():
            got = getattr(input, "dtype", input)
            raise TypeError(f"input must be a tensor of integer indices, got {got!r}")
        stream = self.stream() if self.training and self.p > 0 else None
        return apply_embedding_dropout(input, self.embedding.weight, self.p, self.training,
                                       self.embedding.padding_idx, self.scale, stream)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}" + self._stream_repr()
