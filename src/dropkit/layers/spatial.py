"""Dropout1d / Dropout2d / Dropout3d: channel dropout modules on dropkit's stream."""

from __future__ import annotations

import torch
from torch import nn

from dropkit.functional.spatial import apply_channel_dropout
from dropkit.layers._base import RateModule
from dropkit.layers._torch_classes import unusual_input

__all__ = ["Dropout1d", "Dropout2d", "Dropout3d"]


class _ChannelDropout(RateModule):
    _spatial = 0

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, channels_last: bool = False, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, inplace, seed=seed, generator=generator)
        self.channels_last = bool(channels_last)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dense = isinstance(input, torch.Tensor) and input.layout == torch.strided
        if not (dense and input.is_floating_point()):
            return unusual_input(self, input)
        stream = self.stream() if self.training and self.p > 0 else None
        return apply_channel_dropout(input, self._spatial, self.p, self.training, self.inplace,
                                     self.channels_last, stream)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", channels_last=True" if self.channels_last else "")


class Dropout1d(_ChannelDropout, nn.Dropout1d):
    r"""Zero whole channels of (N, C, L) inputs with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    Tompson et al., CVPR 2015. See :func:`dropkit.functional.dropout1d`. An instance of
    ``torch.nn.Dropout1d`` (as Dropout2d and Dropout3d are of theirs); see :class:`dropkit.Dropout`.

    Args:
        p: probability of zeroing a channel, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        channels_last: inputs are (N, L, C) (Keras's SpatialDropout1D).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (N, C, L) or (C, L) ((N, L, C) or (L, C) with ``channels_last``). Output: same.

    Example:
        >>> m = Dropout1d(0.5, seed=0)
        >>> y = m(torch.ones(2, 3, 4))
        >>> bool((y == y[..., :1]).all())
        True
    """

    _spatial = 1


class Dropout2d(_ChannelDropout, nn.Dropout2d):
    r"""Zero whole feature maps with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    Tompson et al., CVPR 2015. The rank is never guessed: (N, C, H, W) or (C, H, W) only.
    See :func:`dropkit.functional.dropout2d`.

    Args:
        p: probability of zeroing a channel, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        channels_last: inputs are (N, H, W, C) (Keras's SpatialDropout2D).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (N, C, H, W) or (C, H, W) ((N, H, W, C) or (H, W, C) with ``channels_last``).
        Output: same.

    Example:
        >>> m = Dropout2d(0.5, seed=0)
        >>> m(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    _spatial = 2


class Dropout3d(_ChannelDropout, nn.Dropout3d):
    r"""Zero whole volumetric channels with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    See :func:`dropkit.functional.dropout3d`.

    Args:
        p: probability of zeroing a channel, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        channels_last: inputs are (N, D, H, W, C) (Keras's SpatialDropout3D).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (N, C, D, H, W) or (C, D, H, W) (channels last with ``channels_last``). Output: same.

    Example:
        >>> Dropout3d(0.5, seed=0)(torch.ones(1, 2, 2, 2, 2)).shape
        torch.Size([1, 2, 2, 2, 2])
    """

    _spatial = 3
