"""DropPath (alias StochasticDepth): residual-branch dropout modules on dropkit's stream."""

from __future__ import annotations

import torch

from dropkit.functional._checks import check_floating, check_p
from dropkit.functional.droppath import apply_drop_path, check_drop_path_mode, one_rate
from dropkit.layers._base import DROP_PROB, StreamModule

__all__ = ["DropPath", "StochasticDepth"]


class DropPath(StreamModule):
    r"""Drop a residual branch per sample ("row") or per batch ("batch") with probability ``p``.

    Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016. Training:
    ``y[n] = x[n] * m[n] / (1 - p)`` (no division with ``scale_by_keep=False``); evaluation:
    identity. Use as ``x + drop_path(branch(x))``. Per-block rates: :func:`drop_path_rates`.

    timm's spelling works as written: ``DropPath(drop_prob, scale_by_keep)`` (the same
    positional order), and ``drop_prob`` is also an attribute, the same value as ``p``.
    torchvision's order ``(p, mode)`` is :class:`StochasticDepth`'s.

    Args:
        p: probability of dropping the branch, in [0, 1]. Default: 0.0.
        scale_by_keep: divide kept samples by ``1 - p``. Default: True.
        mode: "row" (one draw per sample, N words) or "batch" (one draw, 1 word).
        drop_prob: timm's name for ``p`` (pass one of the two).
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: ``(N, *)``. Output: same.

    Example:
        >>> m = DropPath(0.5, seed=0)
        >>> y = m(torch.ones(4, 3))
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """

    def __init__(
        self,
        p: float = 0.0,
        scale_by_keep: bool = True,
        *,
        mode: str = "row",
        drop_prob: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(scale_by_keep, bool):
            raise TypeError(
                f"scale_by_keep must be a bool, got {scale_by_keep!r}; DropPath takes (p, scale_by_keep) "
                "as timm does: pass mode= by keyword, or use StochasticDepth(p, mode) (torchvision's order)"
            )
        super().__init__(seed=seed, generator=generator)
        self.p = one_rate(p, 0.0, drop_prob, type(self).__name__)
        self.mode = mode
        self.scale_by_keep = scale_by_keep

    _checked_attributes = {"p": check_p, "mode": check_drop_path_mode}

    drop_prob = DROP_PROB

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

    torchvision's positional order: ``StochasticDepth(p, mode)``.

    Args:
        p: probability of dropping the branch, in [0, 1]. Default: 0.0.
        mode: "row" or "batch". Default: "row".
        scale_by_keep: divide kept samples by ``1 - p``. Default: True.
        drop_prob: timm's name for ``p`` (pass one of the two).
        seed: give the layer its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: ``(N, *)``. Output: same.

    Example:
        >>> StochasticDepth(0.2, "batch", seed=0)(torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        p: float = 0.0,
        mode: str = "row",
        *,
        scale_by_keep: bool = True,
        drop_prob: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, scale_by_keep, mode=mode, drop_prob=drop_prob, seed=seed, generator=generator)
