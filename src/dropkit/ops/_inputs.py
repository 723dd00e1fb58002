"""Which tensors may reach a kernel: the guard every op of dropkit.ops calls before it picks a
backend.

The native CPU kernel and the Triton kernels read a tensor's memory through its data pointer,
so only dense, strided tensors with real storage may reach them. :func:`plain` sorts every
other kind before any C or Triton code runs:

* fake tensors (``FakeTensorMode``, torch.compile's tracing) and meta tensors have shapes but
  no data: the op runs on the reference backend (torch operations, which fake and meta
  tensors carry through), giving outputs of the right shape, dtype and device
  (:func:`shape_only`). Under torch.compile the ops' own fake kernels serve instead;
* everything else a kernel cannot read is refused with a TypeError that names the kind:
  DTensor (dropkit.functional handles the DTensor calls it supports before they reach an op),
  nested and sparse tensors, quantized tensors, torch.func (vmap, grad) wrappers, and tensor
  subclasses with a dispatch of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from dropkit import _dtensor, _torch

__all__ = ["plain", "faking", "shape_only"]

_STRIDED = torch.strided
_state = threading.local()

_ADVICE = {
    "dtensor": "dropkit's functions and layers take DTensors (docs/reproducibility.md), its "
               "low-level ops do not; call the dropkit.functional function, or this op on "
               "x.to_local() if per-rank masks are meant",
    "nested": "call it on each component (x.unbind()) or on x.values()",
    "sparse": "call .to_dense() first",
    "quantized": "call .dequantize() first",
    "functorch": "dropkit's random draws do not run under torch.func transforms (vmap, grad, "
                 "jacrev); draw in a loop, or use torch.autograd",
}


def plain(x: torch.Tensor, op: str, refuse: bool = True) -> bool:
    """True if a native or Triton kernel may read ``x``; False if ``x`` is fake or meta (the
    caller returns :func:`shape_only` of its call); TypeError naming the kind otherwise, or
    False with ``refuse=False`` (for the questions "does a backend fuse this?").

    Example:
        >>> plain(torch.ones(2), "dropout"), plain(torch.ones(2, device="meta"), "dropout")
        (True, False)
    """
    if (type(x) is torch.Tensor or type(x) is torch.nn.Parameter) and x.layout is _STRIDED \
            and not (x.is_quantized or x.is_nested or x.is_meta) and not _torch.functorch_active() \
            and _dtensor.global_batch_mesh is None:
        return True
    return _sort(x, op, refuse)


def faking(device: torch.device) -> bool:
    """True for a draw on the meta device, or while a ``FakeTensorMode`` is active outside
    torch.compile: its output would have no data for a kernel to write (the draw returns an
    empty tensor of its shape)."""
    if device.type == "meta":
        return True
    return _torch.fake_mode_active() and not getattr(_state, "shape_only", False) \
        and not torch.compiler.is_compiling()


def _sort(x: torch.Tensor, op: str, refuse: bool) -> bool:
    if _dtensor.global_batch_mesh is not None and refuse:
        raise TypeError(
            f"dropkit's {op} does not draw global-batch masks: inside dropkit.distributed.global_batch "
            "call dropkit's functions and layers (they do), or call this low-level op outside the "
            "context (per-rank masks)"
        )
    if torch.compiler.is_compiling():
        return True  # the op's custom ops and their fake kernels take it from here
    kind = _torch.tensor_kind(x)
    if kind == "dense":
        return True
    if not refuse:
        return False
    if kind in ("fake", "meta"):
        return getattr(_state, "shape_only", False)
    detail = {"sparse": f" (layout {x.layout})", "quantized": f" ({x.dtype})"}.get(kind, "")
    advice = _ADVICE.get(kind, "no kernel of dropkit reads a tensor subclass with a dispatch of its own")
    raise TypeError(f"dropkit.ops.{op} cannot read a {kind} tensor{detail}: {advice}")


def shape_only(op: Callable[..., Any], *args: Any) -> Any:
    """``op(*args)`` for fake or meta tensors: on the reference backend, with every stream
    position that is a tensor (a layer's buffers, themselves fake or meta) read as 0, since
    tensors without data have no mask to draw; the outputs have the right shapes and no values.
    """
    from dropkit.ops._dispatch import use_backend

    args = tuple(0 if _is_position(a) else a for a in args)
    _state.shape_only = True
    try:
        with use_backend("reference"):
            return op(*args)
    finally:
        _state.shape_only = False


def _is_position(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.int64
