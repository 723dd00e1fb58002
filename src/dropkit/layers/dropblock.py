"""DropBlock2d / DropBlock3d modules on dropkit's stream."""

from __future__ import annotations

import math
import numbers

import torch

from dropkit.functional._checks import check_floating
from dropkit.functional._noise import check_positive_ints
from dropkit.functional.dropblock import apply_drop_block
from dropkit.functional.droppath import one_rate
from dropkit.layers._base import DROP_PROB, RateModule

__all__ = ["DropBlock2d", "DropBlock3d"]


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_gamma_scale(gamma_scale: object) -> float:
    if (isinstance(gamma_scale, bool) or not isinstance(gamma_scale, numbers.Real)
            or not math.isfinite(gamma_scale) or gamma_scale < 0):
        raise ValueError(f"gamma_scale must be a finite number >= 0, got {gamma_scale!r}")
    return float(gamma_scale)


def _timm_arguments(
    shared_channels: bool | None, couple_channels: bool | None, with_noise: object, scale_by_keep: object,
    batchwise: object, fast: object,
) -> bool:
    """``shared_channels`` from it or timm's ``couple_channels``; TypeError for what cannot be honoured."""
    if shared_channels is not None and couple_channels is not None and shared_channels != couple_channels:
        raise TypeError(f"got shared_channels={shared_channels!r} and couple_channels={couple_channels!r}: "
                        "pass one (couple_channels is timm's name for shared_channels)")
    if with_noise is not False:
        raise TypeError(f"with_noise={with_noise!r} (timm: Gaussian noise in the dropped blocks) has no "
                        "dropkit spelling: dropkit's DropBlock zeroes the blocks")
    if scale_by_keep is not True:
        raise TypeError(f"scale_by_keep={scale_by_keep!r} has no dropkit spelling: dropkit's DropBlock "
                        "always rescales by count / kept (pass eps= for torchvision's count / (eps + kept))")
    if batchwise is not False:
        raise TypeError(f"batchwise={batchwise!r} (older timm: one mask for the whole batch) has no dropkit "
                        "spelling: dropkit draws one mask per sample")
    if fast not in (None, True, False):
        raise TypeError(f"fast must be a bool, got {fast!r}")
    chosen = shared_channels if shared_channels is not None else couple_channels
    return bool(chosen)


class _DropBlock(RateModule):
    _dims = 2

    def __init__(
        self,
        p: float = 0.1,
        block_size: int | tuple[int, ...] = 7,
        inplace: bool = False,
        eps: float = 0.0,
        *,
        shared_channels: bool | None = None,
        gamma_scale: float = 1.0,
        drop_prob: float | None = None,
        couple_channels: bool | None = None,
        with_noise: bool = False,
        scale_by_keep: bool = True,
        batchwise: bool = False,
        fast: bool | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {inplace!r}; the third argument is inplace as in "
                            "torchvision (timm's third, gamma_scale, is spelled gamma_scale= here)")
        shared = _timm_arguments(shared_channels, couple_channels, with_noise, scale_by_keep, batchwise, fast)
        rate = one_rate(p, 0.1, drop_prob, type(self).__name__)
        super().__init__(rate, inplace, seed=seed, generator=generator)
        self.block_size = check_positive_ints(block_size, self._dims, "block_size")
        self.shared_channels = shared
        self.eps = _check_eps(eps)
        self.gamma_scale = _check_gamma_scale(gamma_scale)

    drop_prob = DROP_PROB

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        stream = self.stream() if self.training and self.p > 0 else None
        return apply_drop_block(input, self._dims, self.p, self.block_size, self.training, self.inplace,
                                self.shared_channels, stream, self.gamma_scale, self.eps)

    def extra_repr(self) -> str:
        s = f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}"
        if self.eps:
            s += f", eps={self.eps}"
        if self.gamma_scale != 1.0:
            s += f", gamma_scale={self.gamma_scale}"
        if self.shared_channels:
            s += ", shared_channels=True"
        return s + self._stream_repr()


class DropBlock2d(_DropBlock):
    r"""DropBlock (Ghiasi, Lin and Le, NeurIPS 2018) on (N, C, H, W) feature maps.

    Seeds with rate ``gamma = gamma_scale * p / b^2 * f^2 / (f - b + 1)^2`` where whole blocks
    fit, each dropping a ``b x b`` region; output ``x * M * count(M) / (eps + count_ones(M))``.
    ``p`` is the drop probability ``1 - keep_prob`` and may be changed between steps (a
    keep_prob schedule). See :mod:`dropkit.functional.dropblock` for the anchor of even blocks
    and the stream layout.

    torchvision's signature ``(p, block_size, inplace, eps)`` works as written (its default
    ``eps`` is 1e-6, dropkit's 0). timm's keywords are honoured where their meaning can be:
    ``drop_prob`` (= ``p``), ``gamma_scale``, ``couple_channels`` (= ``shared_channels``; timm's
    default is True, dropkit's False), ``inplace``; ``fast`` is accepted and, as in timm since
    1.0.23, changes nothing; ``with_noise=True``, ``scale_by_keep=False`` and
    ``batchwise=True`` raise a TypeError. timm seeds blocks anywhere on the map and clips them
    at its edges; dropkit seeds them where they fit (the paper's rule, and torchvision's).

    Args:
        p: drop probability, in [0, 1]. Default: 0.1.
        block_size: a positive int or (b_h, b_w); clipped to the map. Default: 7.
        inplace: do the operation in place.
        eps: added to the kept count in the normalisation (torchvision's eps). Default: 0.
        shared_channels: one block mask per sample for all channels (default: per channel).
        gamma_scale: multiplies the seed rate (timm's). Default: 1.
        drop_prob, couple_channels, with_noise, scale_by_keep, batchwise, fast: timm's spellings,
            as above.
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

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
        eps: added to the kept count in the normalisation (torchvision's eps). Default: 0.
        shared_channels: one block mask per sample for all channels (default: per channel).
        gamma_scale, drop_prob, couple_channels, with_noise, scale_by_keep, batchwise, fast: as
            in :class:`DropBlock2d`.
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: (N, C, D, H, W) or (C, D, H, W). Output: same.

    Example:
        >>> DropBlock3d(0.1, 2, seed=0)(torch.ones(1, 2, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    _dims = 3
