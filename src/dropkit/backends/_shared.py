"""What every backend states the same way: compute dtypes, mask shapes, DropBlock's scale,
the bit layout of a saved mask. Pure functions of shapes, scalars and stored bits; nothing here
draws a random word, so backends share them without calling one another.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "opmath_dtype",
    "saved_like",
    "check_mask_shape",
    "dropblock_mask_shape",
    "dropblock_scale",
    "dropblock_applied_scale",
    "unpack_mask",
    "dropblock_seed_shape",
    "blocks_kept",
    "NORMAL_L",
    "NORMAL_S",
    "NORMAL_C",
    "normal_log",
    "normal_cos_sin",
    "sqrt_rn",
    "box_muller",
    "MIN_TRITON",
    "check_triton_version",
]

# The oldest Triton release the GPU kernels run on. Triton 3.1 (torch 2.5's) rejects the
# kernels' tl.arange bounds ("arange's arguments must be of type tl.constexpr").
MIN_TRITON = (3, 2)


def check_triton_version(version: str) -> None:
    """ImportError naming ``version`` when it is older than :data:`MIN_TRITON`.

    The Triton backend calls it on import, so an old Triton is reported once, as an unavailable
    backend, and the reference backend runs instead.

    Example:
        >>> check_triton_version("3.2.0")
        >>> try:
        ...     check_triton_version("3.1.0")
        ... except ImportError as exc:
        ...     print("3.1.0 is older than 3.2" in str(exc))
        True
    """
    parts = version.split("+")[0].split(".")
    try:
        found = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        raise ImportError(f"cannot read the triton version {version!r}") from None
    if found < MIN_TRITON:
        raise ImportError(
            f"triton {version} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}, the oldest release "
            "dropkit's Triton kernels run on; install triton>=3.2 (it comes with torch >= 2.6) or "
            'pip install "dropkit[gpu]"'
        )

def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype dropout's product is computed in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def saved_like(ref: torch.Tensor, n: int, storage: str) -> torch.Tensor:
    """The uninitialized buffer, on ``ref``'s device, that ``storage`` keeps of a mask of ``n``
    elements: ``(ceil(n / 8),)`` uint8 ("bits"), ``(n,)`` bool ("bool") or ``(0,)`` uint8 ("seed").

    Raises:
        ValueError: naming ``storage`` if it is none of those.

    Example:
        >>> saved_like(torch.ones(1), 20, "bits").shape
        torch.Size([3])
    """
    if storage == "bits":
        return ref.new_empty(((n + 7) // 8,), dtype=torch.uint8)
    if storage == "bool":
        return ref.new_empty((n,), dtype=torch.bool)
    if storage == "seed":
        return ref.new_empty((0,), dtype=torch.uint8)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def check_mask_shape(shape: Sequence[int], mask_shape: Sequence[int]) -> tuple[int, ...]:
    """``mask_shape`` as a tuple, after checking it has ``shape``'s rank and each dim is 1 or equal.

    Example:
        >>> check_mask_shape((4, 3, 5), [4, 1, 1])
        (4, 1, 1)
    """
    try:
        return _checked_mask_shape(tuple(shape), tuple(mask_shape))
    except TypeError:  # unhashable entries: checked (and refused) without the cache
        return _checked_mask_shape.__wrapped__(tuple(shape), tuple(mask_shape))


@functools.lru_cache(maxsize=1024)
def _checked_mask_shape(shape: tuple[int, ...], mask_shape: tuple) -> tuple[int, ...]:
    ms = tuple(int(m) for m in mask_shape)
    if len(ms) != len(shape) or any(m not in (1, s) for m, s in zip(ms, shape, strict=True)):
        raise ValueError(f"mask_shape {ms} must have the rank of {shape}, each dim 1 or equal to it")
    return ms


def dropblock_mask_shape(shape: Sequence[int], shared_channels: bool) -> tuple[int, ...]:
    """``(N, C or 1, *spatial)``: the shape of DropBlock's mask for an input of ``shape``."""
    return (shape[0], 1 if shared_channels else shape[1], *shape[2:])


def dropblock_scale(count: int, kept: int) -> float:
    """DropBlock's normalisation ``count / kept`` in float32 (0 when nothing is kept).

    Rounded exactly as the functional form computes ``count / kept`` with a float32 ``kept``
    (torch evaluates a number divided by a tensor as ``kept.reciprocal() * count``): both counts
    rounded to float32, ``1 / kept`` rounded, then the product rounded. The functional form
    summed the mask in float32, which is exact below 2**24 kept elements; here the count is
    always exact.

    Example:
        >>> dropblock_scale(4, 3)
        1.3333333730697632
    """
    if kept == 0:
        return 0.0
    recip = torch.tensor(kept, dtype=torch.float32).reciprocal()
    return float(recip * torch.tensor(count, dtype=torch.float32))


def dropblock_applied_scale(scale: float, dtype: torch.dtype) -> float:
    """The float32 scale rounded to ``dtype``, as ``x * scale.to(x.dtype)`` rounds it."""
    return float(torch.tensor(scale, dtype=torch.float32).to(dtype))


def bit_weights(device: torch.device) -> torch.Tensor:
    """``(1, 2, 4, ..., 128)`` as uint8 on ``device``, computed there: a copy from the host would
    wait for a CUDA device's queue to drain.

    Example:
        >>> bit_weights(torch.device("cpu")).tolist()
        [1, 2, 4, 8, 16, 32, 64, 128]
    """
    return (2 ** torch.arange(8, dtype=torch.int32, device=device)).to(torch.uint8)


def unpack_mask(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: the first ``numel`` bits as a flat bool tensor."""
    weights = bit_weights(bits.device)
    return ((bits.view(-1, 1) & weights) != 0).reshape(-1)[:numel]


def dropblock_seed_shape(
    shape: Sequence[int], blocks: Sequence[int], shared_channels: bool
) -> tuple[int, ...]:
    """The seed grid ``(N, C or 1, f - b + 1, ...)`` of DropBlock on ``shape`` with ``blocks``.

    Example:
        >>> dropblock_seed_shape((2, 3, 8, 8), (3, 3), False)
        (2, 3, 6, 6)
    """
    valid = tuple(f - b + 1 for f, b in zip(shape[2:], blocks, strict=True))
    return (shape[0], 1 if shared_channels else shape[1], *valid)


def blocks_kept(seeds: torch.Tensor, blocks: Sequence[int]) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask from a bool seed grid, and its kept count.

    Position ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every spatial axis:
    padding ``b - 1`` on both sides and max-pooling with a ``b``-wide window takes that OR.

    Example:
        >>> seeds = torch.zeros(1, 1, 2, 2, dtype=torch.bool); seeds[0, 0, 0, 0] = True
        >>> keep, kept = blocks_kept(seeds, (3, 3))
        >>> kept, keep[0, 0, :3, :3].any().item()
        (7, False)
    """
    blocks = tuple(blocks)
    pad = [s for b in reversed(blocks) for s in (b - 1, b - 1)]
    pool = F.max_pool2d if len(blocks) == 2 else F.max_pool3d
    keep = pool(F.pad(seeds.to(torch.float32), pad), kernel_size=blocks, stride=1) == 0
    return keep, int(keep.sum())


# The normal transform (docs/rng.md, "Normal numbers"): float64 coefficients, lowest power first,
# written as the exact hexadecimal literals every backend uses (near-minimax fits). With z = s^2,
# ln f = 2s + s z (L0 + L1 z + ... + L6 z^6); with t2 = t^2, sin(pi t / 2) = t (S0 + S1 t2 + ...
# + S6 t2^6) and cos(pi t / 2) = C0 + C1 t2 + ... + C6 t2^6.
NORMAL_L = tuple(float.fromhex(h) for h in (
    "0x1.5555555555558p-1",
    "0x1.99999999952e2p-2",
    "0x1.2492492df148dp-2",
    "0x1.c71c62e5800a1p-3",
    "0x1.7462b4ab2ef6bp-3",
    "0x1.39fe606542ddep-3",
    "0x1.2b584aae78a57p-3",
))
NORMAL_S = tuple(float.fromhex(h) for h in (
    "0x1.921fb54442d18p+0",
    "-0x1.4abbce625be41p-1",
    "0x1.466bc677587f8p-4",
    "-0x1.32d2cce2e5b19p-8",
    "0x1.50782fda12d96p-13",
    "-0x1.e30071afc3e59p-19",
    "0x1.e3f38399551bfp-25",
))
NORMAL_C = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0",
    "-0x1.3bd3cc9be458bp+0",
    "0x1.03c1f081b0780p-2",
    "-0x1.55d3c7dbfd139p-6",
    "0x1.e1f4fb60281f6p-11",
    "-0x1.a6c9c1be9eb49p-16",
    "0x1.f3dbcea61b1a4p-22",
))
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # E * LN2_HI is exact for |E| < 2**20
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")


def _horner(x: torch.Tensor, coefs: Sequence[float]) -> torch.Tensor:
    """``c[-1]``, then ``acc * x + c[k]`` down to ``c[0]``: one rounding per product and per sum."""
    acc = x * coefs[-1] + coefs[-2]
    for c in reversed(coefs[:-2]):
        acc = acc * x + c
    return acc


def normal_log(k: torch.Tensor) -> torch.Tensor:
    """``ln((2k + 1) * 2**-25)`` in float64 for int64 ``k`` in [0, 2**24): the log of uniform ``k``.

    ``a = 2k + 1 = f * 2**e`` with ``f`` in [1, 2) cut from the float64 bits (exact); if
    ``f > sqrt 2``: ``f = f / 2``, ``e = e + 1``; ``E = e - 25``; ``s = (f - 1) / (f + 1)``,
    ``z = s * s``, ``lf = (s + s) + (s * z) * R(z)`` with ``R`` by Horner over :data:`NORMAL_L`;
    the result is ``E * LN2_HI + (E * LN2_LO + lf)``. Within 1 ulp of the exact logarithm.

    Shape:
        k: ``(*)`` int64; output: same shape, float64.

    Example:
        >>> import math
        >>> float(normal_log(torch.tensor([2**23]))) == math.log(0.5 + 2**-25)
        True
    """
    a = (2 * k + 1).to(torch.float64)
    bits = a.view(torch.int64)
    e = (bits >> 52) - 1023
    f = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).view(torch.float64)
    big = f > SQRT2
    f = torch.where(big, f * 0.5, f)
    big_e = (e + big.to(torch.int64) - 25).to(torch.float64)
    s = (f - 1.0) / (f + 1.0)
    z = s * s
    lf = (s + s) + (s * z) * _horner(z, NORMAL_L)
    return big_e * LN2_HI + (big_e * LN2_LO + lf)


def normal_cos_sin(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of ``2 pi (2k + 1) * 2**-25`` in float64, for int64 ``k`` in [0, 2**24).

    The quadrant ``q = (k + 2**21) >> 22`` is the integer nearest ``4 u``; ``t = 4u - q`` is exact
    (``(2k + 1 - q * 2**23) * 2**-23``, in (-1/2, 1/2)), ``t2 = t * t``;
    ``sn = t * S(t2)`` and ``C(t2)`` by Horner over :data:`NORMAL_S` and :data:`NORMAL_C` are
    ``sin(pi t / 2)`` and ``cos(pi t / 2)``, and ``(cos, sin)`` is ``(C, sn)``, ``(-sn, C)``,
    ``(-C, -sn)`` or ``(sn, -C)`` for ``q mod 4 = 0, 1, 2, 3``. Within 1 ulp of the exact values.

    Shape:
        k: ``(*)`` int64; outputs: two float64 tensors of the same shape.

    Example:
        >>> import math
        >>> c, s = normal_cos_sin(torch.tensor([0]))
        >>> abs(float(c) - math.cos(2 * math.pi * 2**-25)) < 1e-16
        True
    """
    q = (k + 2**21) >> 22
    t = (2 * k + 1 - (q << 23)).to(torch.float64) * 2.0**-23
    t2 = t * t
    sn = t * _horner(t2, NORMAL_S)
    c = _horner(t2, NORMAL_C)
    odd, neg = (q & 1) == 1, (q & 2) == 2
    cos, sin = torch.where(odd, -sn, c), torch.where(odd, c, sn)
    return torch.where(neg, -cos, cos), torch.where(neg, -sin, sin)


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root of a float64 tensor (IEEE 754 ``sqrt``).

    torch's vectorized CPU ``sqrt`` of float64 is accurate to about half an ulp but is not
    always the correctly rounded value (it differs in about 1% of cases), so CPU tensors go
    through numpy, whose float64 ``sqrt`` is the processor's IEEE instruction. CUDA's float64
    ``sqrt`` is correctly rounded; any other device goes through the CPU.

    Shape:
        x: ``(*)`` float64; output: same shape, on ``x``'s device.

    Example:
        >>> import math
        >>> float(sqrt_rn(torch.tensor([2.0], dtype=torch.float64))) == math.sqrt(2.0)
        True
    """
    if x.device.type == "cuda":
        return torch.sqrt(x)
    root = torch.from_numpy(np.sqrt(x.detach().cpu().numpy()))
    return root.to(x.device)


def box_muller(words: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` standard normals from int64 stream words (``2 * ceil(numel / 2)`` of them).

    Pair ``k`` takes ``k1 = w[2k] >> 8`` and ``k2 = w[2k + 1] >> 8`` (the uniforms
    ``u = (2k + 1) * 2**-25``) and gives ``z[2k] = r * cos``, ``z[2k + 1] = r * sin`` with
    ``r = sqrt(normal_log(k1) * -2)`` and ``(cos, sin) = normal_cos_sin(k2)``, in float64, rounded
    once to ``dtype``. Every operation is a correctly rounded float64 one (no fused multiply-add),
    so the native and Triton kernels compute the same bits.

    Shape:
        words: ``(2 * ceil(numel / 2),)`` int64; output: ``(numel,)`` of ``dtype``.

    Example:
        >>> import math
        >>> z = box_muller(torch.tensor([0x80000000, 0x40000000]), 2, torch.float64)
        >>> torch.allclose(z, torch.tensor([0.0, (2 * math.log(2)) ** 0.5], dtype=torch.float64), atol=1e-6)
        True
    """
    pairs = words.view(-1, 2)
    r = sqrt_rn(normal_log(pairs[:, 0] >> 8) * -2.0)
    cos, sin = normal_cos_sin(pairs[:, 1] >> 8)
    z = torch.stack((r * cos, r * sin), dim=1).reshape(-1)[:numel]
    return z.to(dtype)
