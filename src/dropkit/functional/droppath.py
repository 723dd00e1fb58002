"""Drop path / stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016).

A residual branch is dropped as a whole, per sample ("row", as in timm and torchvision) or for
the whole batch ("batch", as in the paper's experiments), so that the block reduces to its
identity shortcut. The name "drop path" (FractalNet, Larsson et al. 2017) is used rather than
"drop connect", which is the unrelated weight dropout of Wan et al. 2013.

``drop_path`` is :func:`dropout` with every dimension but the batch dimension shared (row) or
every dimension shared (batch), so the per-sample mask is ``dropout_mask((N, 1, ..., 1))``.
"""

from __future__ import annotations

import numbers

import torch

from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional.dropout import apply_dropout, inverted_scale
from dropkit.rng import keep_threshold

__all__ = ["drop_path", "drop_path_rates", "DROP_PATH_MODES", "DROP_PATH_RULES"]

DROP_PATH_MODES = ("row", "batch")
DROP_PATH_RULES = ("linear", "torchvision", "huang")


def check_drop_path_mode(mode: object) -> str:
    """Check that ``mode`` is "row" or "batch".

    Example:
        >>> check_drop_path_mode("row")
        'row'
    """
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


def drop_path(
    input: torch.Tensor, p: float = 0.0, training: bool = True, *, mode: str = "row",
    scale_by_keep: bool = True, seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Zero a residual branch's output per sample (or for the whole batch) with probability ``p``.

    Training: ``y[n] = x[n] * m[n] / (1 - p)`` (``m[n] ~ Bernoulli(1 - p)``; without the
    ``1 / (1 - p)`` when ``scale_by_keep=False``, in which case the caller scales in eval as
    the paper does). Evaluation: ``y = x``. Use as ``x + drop_path(branch(x), p)``.

    Args:
        input: floating-point tensor with the batch in dim 0.
        p: probability of dropping the branch, in [0, 1].
        training: identity when False.
        mode: "row" (one draw per sample, N words) or "batch" (one draw, 1 word).
        scale_by_keep: divide kept rows by ``1 - p``.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(N, *)``, at least 1 dim. Output: same shape.

    Example:
        >>> from dropkit.functional import dropout_mask
        >>> x = torch.ones(4, 3)
        >>> keep = dropout_mask((4, 1), 0.5, seed=0)
        >>> torch.equal(drop_path(x, 0.5, seed=0), x * keep * 2.0)
        True
    """
    check_floating(input)
    p = check_p(p)
    mode = check_drop_path_mode(mode)
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return input
    return apply_drop_path(input, p, mode, bool(scale_by_keep), stream)


def apply_drop_path(
    input: torch.Tensor, p: float, mode: str, scale_by_keep: bool, stream: object
) -> torch.Tensor:
    """The unchecked core of :func:`drop_path`: one mask value per sample (row) or per batch,
    drawn from ``stream`` (N words, or 1), applied in training."""
    if input.dim() < 1:
        raise ValueError(f"drop_path expects input of shape (N, *), got a 0-dim tensor {input!r}")
    if p == 0.0:
        return input
    shared = tuple(range(1 if mode == "row" else 0, input.dim()))
    scale = inverted_scale(p) if scale_by_keep else 1.0
    # One word per sample: backward draws the mask again rather than keeping it.
    return apply_dropout(input, keep_threshold(p), scale, shared, stream, "seed", False)


def drop_path_rates(max_rate: float, depth: int, rule: str = "linear") -> list[float]:
    r"""Per-block drop rates that grow linearly with depth, in the conventions in use.

    * ``"linear"``: ``max_rate * i / (depth - 1)`` for ``i = 0 .. depth - 1``, from 0 to
      ``max_rate`` inclusive (timm's ``linspace(0, max_rate, depth)``; ``[0.0]`` for depth 1).
    * ``"torchvision"``: ``max_rate * i / depth`` for ``i = 0 .. depth - 1`` (the last block
      stays below ``max_rate``), as in torchvision's EfficientNet; its ConvNeXt and Swin
      models use ``"linear"``.
    * ``"huang"``: ``max_rate * l / depth`` for ``l = 1 .. depth``, the paper's
      ``p_l = 1 - (l / L)(1 - p_L)`` survival rule; its expected depth is
      ``depth - max_rate (depth + 1) / 2``, e.g. 40.25 for 54 blocks and ``max_rate = 0.5``.

    Args:
        max_rate: drop rate of the deepest block, in [0, 1].
        depth: number of blocks, a positive int.
        rule: "linear", "torchvision" or "huang".

    Example:
        >>> drop_path_rates(0.2, 3)
        [0.0, 0.1, 0.2]
        >>> 54 - sum(drop_path_rates(0.5, 54, rule="huang"))
        40.25
    """
    max_rate = check_p(max_rate, "max_rate")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth <= 0:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if rule not in DROP_PATH_RULES:
        raise ValueError(f"rule must be one of {DROP_PATH_RULES}, got {rule!r}")
    depth = int(depth)
    if rule == "linear":
        return [max_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
    if rule == "torchvision":
        return [max_rate * i / depth for i in range(depth)]
    return [max_rate * i / depth for i in range(1, depth + 1)]
