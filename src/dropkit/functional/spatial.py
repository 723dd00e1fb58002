"""Channel ("spatial") dropout: one mask value per (sample, channel), shared over positions.

Tompson et al., "Efficient Object Localization Using Convolutional Networks" (CVPR 2015):
neighbouring activations of a feature map are strongly correlated, so zeroing single elements
barely regularizes; zeroing whole channels does. Each function here is :func:`dropout` with
``shared_dims`` set to the spatial dimensions, so the mask is exactly
``dropout_mask((N, C, 1, ..., 1), p, seed, offset)`` and the native kernels draw it.

Ranks are never guessed: ``dropout2d`` takes (N, C, H, W) or (C, H, W) and nothing else (a
3-D input is unbatched 2-D, never silently 1-D dropout).
"""

from __future__ import annotations

import torch

from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional._noise import check_rank
from dropkit.functional.dropout import apply_dropout, inverted_scale
from dropkit.rng import keep_threshold

__all__ = ["dropout1d", "dropout2d", "dropout3d", "spatial_shared_dims"]

_LAYOUTS = {
    1: ("(N, C, L) or (C, L)", "(N, L, C) or (L, C)"),
    2: ("(N, C, H, W) or (C, H, W)", "(N, H, W, C) or (H, W, C)"),
    3: ("(N, C, D, H, W) or (C, D, H, W)", "(N, D, H, W, C) or (D, H, W, C)"),
}


def spatial_shared_dims(ndim: int, spatial: int, channels_last: bool = False) -> tuple[int, ...]:
    """The spatial dimensions of an input of rank ``ndim`` with ``spatial`` spatial dims.

    Raises ValueError unless ``ndim`` is ``spatial + 2`` (batched) or ``spatial + 1``.

    Example:
        >>> spatial_shared_dims(4, 2), spatial_shared_dims(3, 2, channels_last=True)
        ((2, 3), (0, 1))
    """
    if ndim not in (spatial + 1, spatial + 2):
        layout = _LAYOUTS[spatial][1 if channels_last else 0]
        raise ValueError(f"dropout{spatial}d expects input of shape {layout}, got rank {ndim}")
    first = ndim - spatial - (1 if channels_last else 0)
    return tuple(range(first, first + spatial))


def _channel_dropout(
    input: torch.Tensor, spatial: int, p: float, training: bool, inplace: bool, channels_last: bool,
    seed: int | torch.Tensor | None, offset: int | torch.Tensor, generator: torch.Generator | None,
) -> torch.Tensor:
    check_floating(input)
    p = check_p(p)
    stream = open_stream(seed, offset, generator, input.device)
    return apply_channel_dropout(input, spatial, p, training, bool(inplace), bool(channels_last), stream)


def apply_channel_dropout(
    input: torch.Tensor, spatial: int, p: float, training: bool, inplace: bool, channels_last: bool,
    stream: object,
) -> torch.Tensor:
    """The unchecked core of channel dropout: check the rank, then draw one word per
    (sample, channel) from ``stream`` and apply the mask in training."""
    layout = _LAYOUTS[spatial][1 if channels_last else 0]
    check_rank(input, (spatial + 1, spatial + 2), layout, f"dropout{spatial}d")
    if not training or p == 0.0:
        return input
    dims = spatial_shared_dims(input.dim(), spatial, channels_last)
    # One word per (sample, channel): backward draws the mask again rather than keeping it.
    return apply_dropout(input, keep_threshold(p), inverted_scale(p), dims, stream, "seed", inplace)


def dropout1d(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    channels_last: bool = False, seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero whole channels of a sequence with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    Args:
        input: floating-point tensor.
        p: probability of zeroing a channel, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        channels_last: the channel is the last dimension (Keras's SpatialDropout1D layout).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.
            The call uses one word per (sample, channel).

    Shape:
        Input: (N, C, L) or (C, L); (N, L, C) or (L, C) with ``channels_last``. Output: same.

    Example:
        >>> y = dropout1d(torch.ones(2, 3, 4), 0.5, seed=0)
        >>> bool((y == y[..., :1]).all())
        True
    """
    return _channel_dropout(input, 1, p, training, inplace, channels_last, seed, offset, generator)


def dropout2d(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    channels_last: bool = False, seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero whole feature maps with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    Equal to ``dropout(x, p, shared_dims=(H, W dims))``: the mask is
    ``dropout_mask((N, C, 1, 1), p, seed=seed, offset=offset)``.

    Args:
        input: floating-point tensor.
        p: probability of zeroing a channel, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        channels_last: input is (N, H, W, C) (Keras's SpatialDropout2D layout).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: (N, C, H, W) or (C, H, W); (N, H, W, C) or (H, W, C) with ``channels_last``.
        Any other rank is a ValueError. Output: same shape.

    Example:
        >>> from dropkit.functional import dropout_mask
        >>> x = torch.ones(2, 3, 4, 4)
        >>> keep = dropout_mask((2, 3, 1, 1), 0.5, seed=1)
        >>> torch.equal(dropout2d(x, 0.5, seed=1), (x * keep * 2.0))
        True
    """
    return _channel_dropout(input, 2, p, training, inplace, channels_last, seed, offset, generator)


def dropout3d(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
    channels_last: bool = False, seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero whole volumetric channels with probability ``p``; ``y = x * m[n, c] / (1 - p)``.

    Args:
        input: floating-point tensor.
        p: probability of zeroing a channel, in [0, 1].
        training: identity when False.
        inplace: write the result into ``input``.
        channels_last: input is (N, D, H, W, C) (Keras's SpatialDropout3D layout).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: (N, C, D, H, W) or (C, D, H, W); channels last with ``channels_last``.
        Output: same shape.

    Example:
        >>> dropout3d(torch.ones(1, 2, 2, 2, 2), 0.5, seed=3).shape
        torch.Size([1, 2, 2, 2, 2])
    """
    return _channel_dropout(input, 3, p, training, inplace, channels_last, seed, offset, generator)
