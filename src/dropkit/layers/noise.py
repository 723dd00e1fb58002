"""GaussianDropout and GaussianNoise modules on dropkit's stream."""

from __future__ import annotations

import torch

from dropkit.functional._checks import check_floating
from dropkit.functional.noise import apply_gaussian_dropout, apply_gaussian_noise, check_stddev
from dropkit.layers._base import RateModule, StreamModule

__all__ = ["GaussianDropout", "GaussianNoise"]


class GaussianDropout(RateModule):
    r"""Multiply by ``1 + sqrt(p / (1 - p)) z``, ``z ~ N(0, 1)``, in training; identity in eval.

    Srivastava et al., JMLR 2014, sec. 10 (Keras's GaussianDropout). Mean preserved, variance
    of the multiplier ``p / (1 - p)``; ``p = 1`` gives zeros. A call on ``n`` elements uses
    ``2 * ceil(n / 2)`` stream words (Box-Muller pairs; see
    :func:`dropkit.functional.gaussian_dropout`).

    Args:
        p: drop rate of the equivalent Bernoulli dropout, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(*)``. Output: same.

    Example:
        >>> GaussianDropout(0.1, seed=0)(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        if not self.training:
            return input
        return apply_gaussian_dropout(input, self.p, self.inplace, self.stream())


class GaussianNoise(StreamModule):
    r"""Add ``stddev * z``, ``z ~ N(0, 1)``, in training; identity in eval (Keras's GaussianNoise).

    See :func:`dropkit.functional.gaussian_noise` for the stream words used.

    Args:
        stddev: standard deviation of the noise, finite and >= 0.
        inplace: do the operation in place.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(*)``. Output: same.

    Example:
        >>> GaussianNoise(0.1, seed=0)(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, stddev: float, inplace: bool = False, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        self.stddev = stddev
        self.inplace = bool(inplace)

    _checked_attributes = {"stddev": check_stddev}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        if not self.training:
            return input
        return apply_gaussian_noise(input, self.stddev, self.inplace, self.stream())

    def extra_repr(self) -> str:
        return f"stddev={self.stddev}, inplace={self.inplace}" + self._stream_repr()
