"""DropBlock (Ghiasi, Lin and Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018).

Contiguous regions of a feature map are dropped together, because neighbouring activations
carry the same information and single dropped units are easily filled in by a convolution.

1. Block seeds are drawn with rate ``gamma`` over the positions where the whole block fits
   (the paper's ``feat - block + 1`` valid region per dimension), with, per dimension ``d``,
   ``gamma = p / prod_d(b_d) * prod_d(f_d) / prod_d(f_d - b_d + 1)`` (the paper's
   ``(1 - keep_prob) / block_size^2 * feat_size^2 / (feat_size - block_size + 1)^2`` for square
   maps; ``p = 1 - keep_prob``).
2. The seed at valid position ``i`` (per dimension) drops ``[i, i + b)``; its centre is
   ``i + (b - 1) // 2``, so an even block spans ``(b - 1) // 2`` positions before its centre and
   ``b // 2`` after. A block never leaves the map, for odd and even sizes alike.
3. A block size larger than the map is clipped to the map (one valid position: the whole map).
4. The output is ``x * M * count(M) / count_ones(M)``; when every unit is dropped the output is 0.

Seed word ``k`` is element ``k`` (row-major) of the seed grid ``(N, C, f_1 - b_1 + 1, ...)``
(``(N, 1, ...)`` with ``shared_channels``); a seed is set iff its word is below
``round(gamma * 2**32)``.
"""

from __future__ import annotations

import math

import torch

from dropkit import _dtensor, ops
from dropkit.functional._checks import check_floating, check_p, open_stream
from dropkit.functional._noise import check_positive_ints, check_rank, zeros_with_grad
from dropkit.rng import keep_threshold

__all__ = ["drop_block2d", "drop_block3d", "dropblock_gamma", "dropblock_seed_shape"]


def dropblock_gamma(p: float, block_size: tuple[int, ...], feat_size: tuple[int, ...]) -> float:
    """The seed rate of DropBlock, with ``block_size`` clipped to ``feat_size`` per dimension.

    Example:
        >>> round(dropblock_gamma(0.1, (7, 7), (14, 14)), 12)
        0.00625
    """
    p = check_p(p)
    gamma = p
    for b, f in zip(block_size, feat_size, strict=True):
        b = min(b, f)
        gamma *= f / (b * (f - b + 1))
    return gamma


def dropblock_seed_shape(
    shape: tuple[int, ...], block_size: tuple[int, ...], shared_channels: bool = False
) -> tuple[int, ...]:
    """Shape of the seed grid for a batched input ``(N, C, *spatial)``: one word per element.

    Example:
        >>> dropblock_seed_shape((2, 3, 14, 14), (7, 7))
        (2, 3, 8, 8)
    """
    spatial = shape[2:]
    valid = tuple(f - min(b, f) + 1 for b, f in zip(block_size, spatial, strict=True))
    return (shape[0], 1 if shared_channels else shape[1], *valid)


def _drop_block(
    input: torch.Tensor, dims: int, p: float, block_size: int | tuple[int, ...], training: bool,
    inplace: bool, shared_channels: bool, seed: int | torch.Tensor | None, offset: int | torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    check_floating(input)
    p = check_p(p)
    blocks = check_positive_ints(block_size, dims, "block_size")
    stream = open_stream(seed, offset, generator, input.device)
    return apply_drop_block(input, dims, p, blocks, training, bool(inplace), bool(shared_channels), stream)


def apply_drop_block(
    input: torch.Tensor,
    dims: int,
    p: float,
    blocks: tuple[int, ...],
    training: bool,
    inplace: bool,
    shared_channels: bool,
    stream: object,
    gamma_scale: float = 1.0,
    eps: float = 0.0,
) -> torch.Tensor:
    """The unchecked core of DropBlock: check the rank, then draw the seed grid from ``stream``
    (one word per seed position) and apply the block mask in training.

    ``gamma_scale`` multiplies the seed rate (timm's argument; the rate is capped at 1). With
    ``eps > 0`` the output is ``x * M * count / (eps + kept)`` (torchvision's normalisation)
    rather than ``x * M * count / kept``: the kept count is read from the same block mask
    applied to ones, one more pass."""
    layout = "(N, C, H, W) or (C, H, W)" if dims == 2 else "(N, C, D, H, W) or (C, D, H, W)"
    check_rank(input, (dims + 1, dims + 2), layout, f"drop_block{dims}d")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        y = zeros_with_grad(input)
        return input.copy_(y) if inplace else y
    x = input if input.dim() == dims + 2 else input.unsqueeze(0)
    spatial = tuple(x.shape[2:])
    blocks = tuple(min(b, f) for b, f in zip(blocks, spatial, strict=True))
    seed_shape = dropblock_seed_shape(tuple(x.shape), blocks, shared_channels)
    gamma = min(dropblock_gamma(p, blocks, spatial) * gamma_scale, 1.0)
    if _dtensor.routes(x):
        y, kept = _dtensor.drop_block(x, blocks, keep_threshold(gamma), shared_channels, stream)
        if eps > 0.0:
            kept *= x.shape[1] if shared_channels else 1  # the kept elements of x, as counted below
            y = y * (kept / (kept + eps))
        y = y.view(input.shape)
        return input.copy_(y) if inplace else y
    seed, offset = stream.take(math.prod(seed_shape))
    # One pass (dropkit.ops): the block mask from the seed grid (a word below the threshold is a
    # seed; position y is dropped iff a seed lies at y - b + 1 .. y on every axis), its kept count
    # from one reduction over the reduced mask, then y = where(keep, x * count / kept, 0).
    y = ops.drop_block(x, blocks, seed, offset, keep_threshold(gamma), shared_channels, "bits")
    if eps > 0.0:
        with torch.no_grad():
            # The same block mask applied to ones: non-zero exactly where an element is kept.
            kept = int(ops.drop_block(torch.ones_like(x), blocks, seed, offset, keep_threshold(gamma),
                                      shared_channels, "bits").count_nonzero())
        y = y * (kept / (kept + eps))
    y = y.view(input.shape)
    return input.copy_(y) if inplace else y


def drop_block2d(
    input: torch.Tensor, p: float = 0.1, block_size: int | tuple[int, int] = 7, training: bool = True,
    inplace: bool = False, *, shared_channels: bool = False, seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropBlock on 2-D feature maps: drop ``b x b`` regions, renormalize by the kept fraction.

    ``y = x * M * count(M) / count_ones(M)``; block seeds with rate
    ``gamma = p / b^2 * f^2 / (f - b + 1)^2`` (per dimension for non-square maps; see the
    module docstring for the exact anchor of even blocks and the stream words used).

    Args:
        input: floating-point tensor.
        p: drop probability ``1 - keep_prob``, in [0, 1]; ``p = 1`` returns zeros.
        block_size: a positive int or ``(b_h, b_w)``; clipped to the map.
        training: identity when False.
        inplace: write the result into ``input``.
        shared_channels: one block mask per sample shared by all channels (else per channel).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: (N, C, H, W) or (C, H, W). Output: same shape.

    Example:
        >>> y = drop_block2d(torch.ones(2, 4, 14, 14), 0.1, 7, seed=0)
        >>> y.shape
        torch.Size([2, 4, 14, 14])
    """
    return _drop_block(input, 2, p, block_size, training, inplace, shared_channels, seed, offset, generator)


def drop_block3d(
    input: torch.Tensor, p: float = 0.1, block_size: int | tuple[int, int, int] = 7, training: bool = True,
    inplace: bool = False, *, shared_channels: bool = False, seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropBlock on 3-D feature maps: drop ``b x b x b`` regions, renormalize by the kept fraction.

    As :func:`drop_block2d` with ``gamma = p / prod(b_d) * prod(f_d) / prod(f_d - b_d + 1)``
    over the three spatial dimensions.

    Args:
        input: floating-point tensor.
        p: drop probability ``1 - keep_prob``, in [0, 1]; ``p = 1`` returns zeros.
        block_size: a positive int or ``(b_d, b_h, b_w)``; clipped to the map.
        training: identity when False.
        inplace: write the result into ``input``.
        shared_channels: one block mask per sample shared by all channels.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: (N, C, D, H, W) or (C, D, H, W). Output: same shape.

    Example:
        >>> drop_block3d(torch.ones(1, 2, 6, 6, 6), 0.2, 3, seed=0).shape
        torch.Size([1, 2, 6, 6, 6])
    """
    return _drop_block(input, 3, p, block_size, training, inplace, shared_channels, seed, offset, generator)
