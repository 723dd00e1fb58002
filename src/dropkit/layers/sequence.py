"""LockedDropout and EmbeddingDropout modules on dropkit's stream."""

from __future__ import annotations

import torch
from torch import nn

from dropkit.functional._checks import check_floating
from dropkit.functional._noise import check_rank
from dropkit.functional.sequence import embedding_dropout, locked_dropout, locked_time_dim
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
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: (T, N, C) ((N, T, C) with ``batch_first``) or (T, C). Output: same.

    Example:
        >>> y = LockedDropout(0.5, seed=0)(torch.ones(6, 2, 3))
        >>> bool((y == y[0]).all())
        True
    """

    def __init__(
        self,
        p: float = 0.5,
        batch_first: bool = False,
        inplace: bool = False,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, inplace, seed=seed, generator=generator)
        self.batch_first = bool(batch_first)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        p = self._check_rate(self.p)
        seed, offset = None, 0
        if self.training and p > 0:
            check_floating(input)
            check_rank(input, (2, 3), "(T, N, C), (N, T, C) or (T, C)", "LockedDropout")
            time = locked_time_dim(input.dim(), self.batch_first)
            seed, offset = self.take_stream(input.numel() // max(input.shape[time], 1))
        return locked_dropout(
            input,
            p,
            self.training,
            self.inplace,
            batch_first=self.batch_first,
            seed=seed,
            offset=offset,
        )

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
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: ``(*)`` integer indices. Output: ``(*, E)``.

    Example:
        >>> m = EmbeddingDropout(nn.Embedding(10, 4), 0.5, seed=0)
        >>> m(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 4])
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        p: float = 0.1,
        scale: bool = True,
        *,
        seed: int | None = None,
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
        self.p = self._check_rate(p)
        self.scale = bool(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        p = self._check_rate(self.p)
        seed, offset = None, 0
        if self.training and p > 0:
            seed, offset = self.take_stream(self.embedding.num_embeddings)
        return embedding_dropout(
            input,
            self.embedding.weight,
            p,
            self.training,
            padding_idx=self.embedding.padding_idx,
            scale=self.scale,
            seed=seed,
            offset=offset,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}" + self._stream_repr()
