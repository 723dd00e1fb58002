"""DropPath (alias StochasticDepth): residual-branch dropout modules on dropkit's stream."""

from __future__ import annotations

import torch

from dropkit.functional._checks import check_floating, check_p
from dropkit.functional.droppath import apply_drop_path, check_drop_path_mode
from dropkit.layers._base import StreamModule

__all__ = ["DropPath", "StochasticDepth"]


class DropPath(StreamModule):
    r"""Drop a residual branch per sample ("row") or per batch ("batch") with probability ``p``.

    Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016. Training:
    ``y[n] = x[n] * m[n] / (1 - p)`` (no division with ``scale_by_keep=False``); evaluation:
    identity. Use as ``x + drop_path(branch(x))``. Per-block rates: :func:`drop_path_rates`.

    Args:
        p: probability of dropping the branch, in [0, 1]. Default: 0.0.
        mode: "row" (one draw per sample, N words) or "batch" (one draw, 1 word).
        scale_by_keep: divide kept samples by ``1 - p``. Default: True.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(N, *)``. Output: same.

    Example:
        >>> m = DropPath(0.5, seed=0)
        >>> y = m(torch.ones(4, 3))
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """

    def __init__(
        self, p: float = 0.0, mode: str = "row", scale_by_keep: bool = True, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        self.p = p
        self.mode = mode
        self.scale_by_keep = bool(scale_by_keep)

    _checked_attributes = {"p": check_p, "mode": check_drop_path_mode}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        check_floating(input)
        return apply_drop_path(input, self.p, self.mode, self.scale_by_keep, self.stream())

    def extra_repr(self) -> str:
        s = f"p={self.p}, mode={self.mode!r}"
        if not self.scale_by_keep:
            s += ", scale_by_keep=False"
        return s + self._stream_repr()


class StochasticDepth(DropPath):
    r"""The name of :class:`DropPath` used by torchvision and the stochastic depth paper.

    Args:
        p: probability of dropping the branch, in [0, 1]. Default: 0.0.
        mode: "row" or "batch".
        scale_by_keep: divide kept samples by ``1 - p``. Default: True.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(N, *)``. Output: same.

    Example:
        >>> StochasticDepth(0.2, "batch", seed=0)(torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """
