"""DropBlock2d / DropBlock3d modules on dropkit's stream."""

from __future__ import annotations

import torch

from dropkit.functional._checks import check_floating
from dropkit.functional._noise import check_positive_ints
from dropkit.functional.dropblock import apply_drop_block
from dropkit.layers._base import RateModule

__all__ = ["DropBlock2d", "DropBlock3d"]


class _DropBlock(RateModule):
    _dims = 2

    def __init__(
        self, p: float = 0.1, block_size: int | tuple[int, ...] = 7, inplace: bool = False, *,
        shared_channels: bool = False, seed: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, inplace, seed=seed, generator=generator)
        self.block_size = check_positive_ints(block_size, self._dims, "block_size")
        self.shared_channels = bool(shared_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        stream = self.stream() if self.training and self.p > 0 else None
        return apply_drop_block(input, self._dims, self.p, self.block_size, self.training, self.inplace,
                                self.shared_channels, stream)

    def extra_repr(self) -> str:
        s = f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}"
        if self.shared_channels:
            s += ", shared_channels=True"
        return s + self._stream_repr()


class DropBlock2d(_DropBlock):
    r"""DropBlock (Ghiasi, Lin and Le, NeurIPS 2018) on (N, C, H, W) feature maps.

    Seeds with rate ``gamma = p / b^2 * f^2 / (f - b + 1)^2`` where whole blocks fit, each
    dropping a ``b x b`` region; output ``x * M * count(M) / count_ones(M)``. ``p`` is the drop
    probability ``1 - keep_prob`` and may be changed between steps (a keep_prob schedule).
    See :mod:`dropkit.functional.dropblock` for the anchor of even blocks and the stream layout.

    Args:
        p: drop probability, in [0, 1]. Default: 0.1.
        block_size: a positive int or (b_h, b_w); clipped to the map. Default: 7.
        inplace: do the operation in place.
        shared_channels: one block mask per sample for all channels (default: per channel).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (N, C, H, W) or (C, H, W). Output: same.

    Example:
        >>> DropBlock2d(0.1, 3, seed=0)(torch.ones(2, 4, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """


class DropBlock3d(_DropBlock):
    r"""DropBlock on (N, C, D, H, W) volumes: ``b x b x b`` blocks, per-dimension gamma.

    Args:
        p: drop probability, in [0, 1]. Default: 0.1.
        block_size: a positive int or (b_d, b_h, b_w); clipped to the map. Default: 7.
        inplace: do the operation in place.
        shared_channels: one block mask per sample for all channels (default: per channel).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: (N, C, D, H, W) or (C, D, H, W). Output: same.

    Example:
        >>> DropBlock3d(0.1, 2, seed=0)(torch.ones(1, 2, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    _dims = 3
