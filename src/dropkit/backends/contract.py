"""What a backend provides: one typed record, filled completely by every backend.

A backend (:mod:`.reference`, :mod:`.cpu`, :mod:`.triton`) describes itself with one
:class:`Backend`: its name, its limits (which dtypes, how many dims its broadcast kernels take,
where its stream positions live) and one callable per kernel, or :data:`NOT_PROVIDED` where it
has none, in which case :mod:`dropkit.ops` runs that kernel on the reference backend, which
provides every kernel. :mod:`dropkit.ops` chooses among backends in one place
(``dropkit.ops._dispatch.route``) and never asks a backend module what it has.

Positions. ``seed`` and ``offset`` arrive as Python ints in ``[0, 2**64)`` for a backend whose
``position`` is ``"host"``, and as 0-dim int64 device tensors holding the same bits for a
``"device"`` backend (its kernels read them from memory, so no value travels to the host).

The kernels. ``x`` and ``grad`` of the element-wise kernels are contiguous, element ``i`` of
their flattened view meeting stream word ``i``; the shared-mask kernels read any strides and
keep ``x``'s memory format. ``y = x * scale`` where the word is ``>= threshold`` and exactly
``0`` elsewhere, the product computed in float32 (float64 for float64 tensors) and rounded once
to the tensor's dtype. ``saved`` is the bit-packed keep-mask for ``storage="bits"`` (element
``i`` is bit ``i % 8`` of byte ``i // 8``), a bool keep-mask for ``"bool"`` and an empty uint8
tensor for ``"seed"`` (backward then draws the mask again from ``seed`` and ``offset``).
Each Protocol below states one kernel's signature and formula; ``tests/test_contract.py``
checks every backend's callables against them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Literal, Protocol

import torch

__all__ = [
    "NOT_PROVIDED",
    "HOST",
    "DEVICE",
    "Backend",
    "KERNELS",
    "KeepMask",
    "PackMask",
    "DropoutForward",
    "DropoutBackward",
    "Draw",
    "GaussianApply",
    "BcastForward",
    "BcastBackward",
    "BcastRedraw",
    "AlphaForward",
    "AlphaBackward",
    "DropBlockForward",
    "DropBlockBackward",
    "Fused",
]

NOT_PROVIDED = None
"""The value of a kernel field that a backend does not provide (the reference backend runs it)."""

HOST: Literal["host"] = "host"
DEVICE: Literal["device"] = "device"

class KeepMask(Protocol):
    """Flat bool keep-mask: element ``i`` is kept iff word ``i >= threshold``. Shape ``(numel,)``."""

    def __call__(self, numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int,
                 device: torch.device | str | None = None) -> torch.Tensor: ...


class PackMask(Protocol):
    """A bool mask (flattened) packed as the "bits" storage: ``(ceil(N / 8),)`` uint8."""

    def __call__(self, mask: torch.Tensor) -> torch.Tensor: ...


class DropoutForward(Protocol):
    """``(where(keep, x * scale, +0.0), saved)`` of a contiguous ``x``; ``keep`` from words ``0..N-1``."""

    def __call__(self, x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int,
                 scale: float, storage: str) -> tuple[torch.Tensor, torch.Tensor]: ...


class DropoutBackward(Protocol):
    """``where(keep, grad * scale, +0.0)``, the mask read from ``saved`` or drawn again ("seed")."""

    def __call__(self, grad: torch.Tensor, saved: torch.Tensor, seed: int | torch.Tensor,
                 offset: int | torch.Tensor, threshold: int, scale: float, storage: str) -> torch.Tensor: ...


class Draw(Protocol):
    """``numel`` uniforms ``((w >> 8) + 0.5) * 2**-24`` or standard normals (Box-Muller over
    ``2 * ceil(numel / 2)`` words) of the stream. Shape ``(numel,)``."""

    def __call__(self, numel: int, seed: int | torch.Tensor, offset: int | torch.Tensor, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> torch.Tensor: ...


class GaussianApply(Protocol):
    """``x + c * z`` (``additive``) or ``x * (1 + c * z)``, ``z`` normal ``i`` of the stream for
    element ``i``; rounded in float32 (float64 for float64) and once to ``x``'s dtype."""

    def __call__(self, x: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor, c: float,
                 additive: bool) -> torch.Tensor: ...


class BcastForward(Protocol):
    """``(where(keep[broadcast], x * scale, +0.0), saved)``: the mask drawn over ``mask_shape``
    (``x``'s rank, each dim ``x``'s or 1; element ``j`` row-major uses word ``j``)."""

    def __call__(self, x: torch.Tensor, mask_shape: Sequence[int], seed: int | torch.Tensor,
                 offset: int | torch.Tensor, threshold: int, scale: float,
                 storage: str) -> tuple[torch.Tensor, torch.Tensor]: ...


class BcastBackward(Protocol):
    """``where(keep[broadcast], grad * scale, +0.0)``, the reduced mask from ``saved`` or drawn again."""

    def __call__(self, grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int],
                 seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, scale: float,
                 storage: str) -> torch.Tensor: ...


class BcastRedraw(Protocol):
    """:class:`BcastForward` with ``storage="seed"`` and only ``y`` returned: the map is linear and
    its own adjoint, so the same call on the gradient is its backward."""

    def __call__(self, x: torch.Tensor, mask_shape: Sequence[int], seed: int | torch.Tensor,
                 offset: int | torch.Tensor, threshold: int, scale: float) -> torch.Tensor: ...


class AlphaForward(Protocol):
    """Alpha dropout: ``(where(keep[broadcast], x * a + b, fill), saved)``, ``a``, ``b``, ``fill``
    and each operation rounded in float32 (float64 for float64), no fused multiply-add."""

    def __call__(self, x: torch.Tensor, mask_shape: Sequence[int], seed: int | torch.Tensor,
                 offset: int | torch.Tensor, threshold: int, a: float, b: float, fill: float,
                 storage: str) -> tuple[torch.Tensor, torch.Tensor]: ...


class AlphaBackward(Protocol):
    """Alpha dropout's gradient ``where(keep[broadcast], grad * a, +0.0)``."""

    def __call__(self, grad: torch.Tensor, saved: torch.Tensor, mask_shape: Sequence[int],
                 seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int, a: float,
                 storage: str) -> torch.Tensor: ...


class DropBlockForward(Protocol):
    """DropBlock on ``x`` (N, C, *spatial): ``(where(keep[broadcast], x * scale, +0.0), saved,
    scale)``, the block mask from the seed grid and ``scale`` = mask elements over kept ones."""

    def __call__(self, x: torch.Tensor, block_size: Sequence[int], seed: int | torch.Tensor,
                 offset: int | torch.Tensor, threshold: int, shared_channels: bool,
                 storage: str) -> tuple[torch.Tensor, torch.Tensor, float]: ...


class DropBlockBackward(Protocol):
    """DropBlock's gradient ``where(keep[broadcast], grad * scale, +0.0)`` ("seed" rebuilds the mask)."""

    def __call__(self, grad: torch.Tensor, saved: torch.Tensor, block_size: Sequence[int],
                 seed: int | torch.Tensor, offset: int | torch.Tensor, threshold: int,
                 shared_channels: bool, scale: float, storage: str) -> torch.Tensor: ...


class Fused(Protocol):
    """The module of a fused kernel, imported on first use (attention with dropout:
    ``supports(...)``, ``attention(...)``; dropout-add-norm: ``MAX_COLUMNS``,
    ``FusedDropoutAddNorm``)."""

    def __call__(self) -> ModuleType: ...


@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend, completely described: its limits and one callable (or :data:`NOT_PROVIDED`)
    per kernel.

    Args:
        name: "reference", "cpu" or "triton" (what :func:`dropkit.ops.backend_name` says).
        position: :data:`HOST` (positions as Python ints) or :data:`DEVICE` (0-dim int64 tensors).
        dtypes: the floating dtypes it runs, None for every dtype; others go to the reference.
        max_dims: the most dims of size > 1 its shared-mask kernels take, None for no limit.
        error: why it cannot run on this machine (its library did not load), None when it can;
            :mod:`dropkit.ops` then warns once and uses the reference backend.

    Example:
        >>> from dropkit.backends import reference
        >>> reference.BACKEND.name, reference.BACKEND.position, reference.BACKEND.max_dims
        ('reference', 'host', None)
        >>> [k for k in KERNELS if not reference.BACKEND.provides(k)]
        ['bcast_dropout_redraw', 'fused_attention', 'fused_norm']
    """

    name: str
    position: Literal["host", "device"]
    dtypes: frozenset[torch.dtype] | None
    max_dims: int | None
    keep_mask: KeepMask
    pack_mask: PackMask
    dropout_forward: DropoutForward
    dropout_backward: DropoutBackward
    uniform: Draw | None
    normal: Draw | None
    gaussian_apply: GaussianApply | None
    bcast_dropout_forward: BcastForward | None
    bcast_dropout_backward: BcastBackward | None
    bcast_dropout_redraw: BcastRedraw | None
    alpha_forward: AlphaForward | None
    alpha_backward: AlphaBackward | None
    dropblock_forward: DropBlockForward | None
    dropblock_backward: DropBlockBackward | None
    fused_attention: Fused | None
    fused_norm: Fused | None
    error: str | None = None

    def provides(self, kernel: str) -> bool:
        """Whether this backend has its own ``kernel`` (one of :data:`KERNELS`)."""
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; the contract's kernels are {KERNELS}")
        return getattr(self, kernel) is not NOT_PROVIDED

    def runs(self, dtype: torch.dtype | None) -> bool:
        """Whether this backend runs tensors of ``dtype`` (None: a draw with no input tensor)."""
        return dtype is None or self.dtypes is None or dtype in self.dtypes


# Field name -> the Protocol its callable follows.
_PROTOCOLS: dict[str, type] = {
    "keep_mask": KeepMask, "pack_mask": PackMask, "dropout_forward": DropoutForward,
    "dropout_backward": DropoutBackward, "uniform": Draw, "normal": Draw, "gaussian_apply": GaussianApply,
    "bcast_dropout_forward": BcastForward, "bcast_dropout_backward": BcastBackward,
    "bcast_dropout_redraw": BcastRedraw, "alpha_forward": AlphaForward, "alpha_backward": AlphaBackward,
    "dropblock_forward": DropBlockForward, "dropblock_backward": DropBlockBackward,
    "fused_attention": Fused, "fused_norm": Fused,
}
KERNELS: tuple[str, ...] = tuple(_PROTOCOLS)
"""The kernel fields of :class:`Backend`, in order."""


def protocol_of(kernel: str) -> type:
    """The Protocol that ``kernel``'s callable follows.

    Example:
        >>> protocol_of("dropout_forward").__name__
        'DropoutForward'
    """
    return _PROTOCOLS[kernel]


def parameters_of(kernel: str) -> list[str]:
    """The parameter names the contract gives ``kernel``, in order.

    Example:
        >>> parameters_of("keep_mask")
        ['numel', 'seed', 'offset', 'threshold', 'device']
    """
    return list(inspect.signature(_PROTOCOLS[kernel].__call__).parameters)[1:]


def describe(module: ModuleType, name: str, position: Literal["host", "device"],
             dtypes: frozenset[torch.dtype] | None, max_dims: int | None, error: str | None = None,
             **kernels: Callable | None) -> Backend:
    """The :class:`Backend` of ``module``: each kernel given in ``kernels``, else the function of
    that name in ``module``; a kernel it has no function for must be given as :data:`NOT_PROVIDED`.

    Raises:
        TypeError: naming the kernels that are neither given nor found in ``module``.

    Example:
        >>> from dropkit.backends import reference
        >>> describe(reference, "reference", HOST, None, None, bcast_dropout_redraw=NOT_PROVIDED,
        ...          fused_attention=NOT_PROVIDED, fused_norm=NOT_PROVIDED).name
        'reference'
    """
    missing = [k for k in KERNELS if k not in kernels and not callable(module.__dict__.get(k))]
    if missing:
        raise TypeError(f"backend {name!r} neither provides nor declines these kernels: {missing}")
    fields = {k: kernels[k] if k in kernels else module.__dict__[k] for k in KERNELS}
    return Backend(name=name, position=position, dtypes=dtypes, max_dims=max_dims, error=error, **fields)
