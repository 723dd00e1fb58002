"""AlphaDropout and FeatureAlphaDropout modules on dropkit's stream."""

from __future__ import annotations

import torch
from torch import nn

from dropkit.functional.alpha import apply_alpha, feature_mask_shape
from dropkit.layers._base import RateModule
from dropkit.layers._torch_classes import unusual_input

__all__ = ["AlphaDropout", "FeatureAlphaDropout"]


class _Alpha(RateModule):
    _feature = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dense = isinstance(input, torch.Tensor) and input.layout == torch.strided
        if not (dense and input.is_floating_point()):
            return unusual_input(self, input)
        shape = feature_mask_shape(input) if self._feature else tuple(input.shape)
        if not self.training:
            return input
        return apply_alpha(input, self.p, self.inplace, shape, self.stream())


class AlphaDropout(_Alpha, nn.AlphaDropout):
    r"""Alpha dropout for SELU networks (Klambauer et al., NeurIPS 2017).

    Training: ``y = a (x m + alpha' (1 - m)) + b`` with ``alpha' = -lambda alpha`` of SELU and
    ``a = (q + alpha'^2 q (1 - q))^(-1/2)``, ``b = -a alpha' (1 - q)``, ``q = 1 - p``; keeps mean 0
    and variance 1 of standardized inputs. Evaluation: identity. See
    :func:`dropkit.functional.alpha_dropout`. An instance of ``torch.nn.AlphaDropout`` (as
    FeatureAlphaDropout is of ``torch.nn.FeatureAlphaDropout``); see :class:`dropkit.Dropout`.

    Args:
        p: probability of dropping an element, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(*)``. Output: same.

    Example:
        >>> AlphaDropout(0.2, seed=0)(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """


class FeatureAlphaDropout(_Alpha, nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels: one mask value per (sample, channel).

    The formula of :class:`AlphaDropout` with the mask broadcast over the spatial dims. See
    :func:`dropkit.functional.feature_alpha_dropout`.

    Args:
        p: probability of dropping a channel, in [0, 1]. Default: 0.5.
        inplace: do the operation in place.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(N, C, *)``, always batched. Output: same.

    Example:
        >>> FeatureAlphaDropout(0.2, seed=0)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    _feature = True
