"""The one place that touches torch's private functions and internals.

dropkit needs a few things torch has no public API for:

* whether a call runs inside a backward pass (``torch._C._current_graph_task_id``);
* whether saved-tensor hooks are active (``torch._C._autograd._top_saved_tensors_default_hooks``);
* which activation-checkpoint region (``torch.utils.checkpoint``) a call runs in, and whether
  it is the region's first forward or its recomputation during backward;
* what kind of tensor an op received (:func:`tensor_kind`: fake, functorch-wrapped, DTensor,
  ...), so that no kernel is handed memory it cannot read;
* which block of a DTensor's global index space a rank holds (:func:`local_box`).

All three are probed here, once, at import. A torch release that lacks one gets a clear
RuntimeError from :func:`require` when the feature is used, never a silent wrong answer.

How checkpoint regions are found: both checkpoint modes call the user's function from a
handful of known functions of ``torch.utils.checkpoint``, and keep the region's state in one of
their local variables (the autograd context ``ctx`` in reentrant mode; the ``_CheckpointFrame``
in non-reentrant mode). :func:`checkpoint_regions` walks the Python call stack from the caller
outwards, compares each frame's code object with those functions, and returns the region
objects it passes, innermost first, each marked as a first forward or a recomputation.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "FORWARD",
    "RECOMPUTE",
    "probe_errors",
    "require",
    "checkpoint_regions",
    "graph_task_id",
    "top_hooks",
    "function_apply",
    "functorch_active",
    "tracing_state",
    "tensor_kind",
    "fake_mode_active",
    "local_box",
]

FORWARD, RECOMPUTE = "forward", "recompute"

_errors: dict[str, str] = {}


def _probe(name: str, find: Callable[[], Any]) -> Any:
    try:
        value = find()
    except (AttributeError, ImportError, StopIteration, TypeError) as exc:
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    if value is None:
        _errors[name] = "not found"
    return value


_graph_task_id = _probe("graph task id", lambda: torch._C._current_graph_task_id)
_top_hooks = _probe("saved-tensor hooks", lambda: torch._C._autograd._top_saved_tensors_default_hooks)
# The pre-filter that tells whether a call could be inside a checkpoint region, as plain C
# functions for hot paths to call inline: reentrant checkpointing runs its first forward with
# grad disabled and recomputes inside backward (graph task id != -1); non-reentrant
# checkpointing runs under saved-tensor hooks. A grad-recording call outside backward with no
# hooks is in no region, and pays no look at the call stack. A torch without these functions
# gets stand-ins that always say "maybe", so every call takes the exact (slower) look instead
# of a wrong shortcut.
graph_task_id = _graph_task_id or (lambda: 0)
top_hooks = _top_hooks or (lambda ignore_is_tracing: True)
tracing_state = _probe("tracer state", lambda: torch._C._get_tracing_state) or (lambda: None)
functorch_active = (
    _probe("functorch state", lambda: torch._C._are_functorch_transforms_active) or (lambda: True)
)


def function_apply(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """The C entry of ``function.apply``, without the Python wrapper's argument binding.

    torch's ``Function.apply`` binds default arguments and unwraps functorch wrappers (about a
    dozen Python calls) before calling this; a caller that passes every argument positionally
    and checks :data:`functorch_active` first can call it directly.
    """
    return super(torch.autograd.Function, function).apply  # type: ignore[misc]


def _nested_code(outer: Any, name: str) -> Any:
    """The code object of the function ``name`` defined inside ``outer``'s body."""
    return next(c for c in outer.__code__.co_consts if inspect.iscode(c) and c.co_name == name)


def _checkpoint_codes() -> dict[Any, tuple[str, str, str | None]]:
    """code object -> (kind, local holding the region, attribute of that local or None)."""
    from torch.utils import checkpoint as cp

    codes = {
        cp.CheckpointFunction.forward.__code__: (FORWARD, "ctx", None),
        cp.CheckpointFunction.backward.__code__: (RECOMPUTE, "ctx", None),
        _nested_code(cp._checkpoint_hook.__init__, "unpack_hook"): (RECOMPUTE, "frame", None),
    }
    # checkpoint(use_reentrant=False) drives a generator, held in a local `gen`, whose suspended
    # frame holds the region as `new_frame`: the function holding it is checkpoint() itself in
    # some releases and a helper of it (_checkpoint_impl) in others.
    own = [f for f in vars(cp).values() if inspect.isfunction(f) and f.__module__ == cp.__name__]
    entries = [inspect.unwrap(f) for f in own]
    holders = [f.__code__ for f in entries if "gen" in f.__code__.co_varnames]
    if not holders:
        raise AttributeError("no function of torch.utils.checkpoint holds the generator as `gen`")
    codes.update({code: (FORWARD, "gen", "new_frame") for code in holders})
    return codes


_CODES: dict[Any, tuple[str, str, str | None]] = (
    _probe("torch.utils.checkpoint layout", _checkpoint_codes) or {}
)


def probe_errors() -> dict[str, str]:
    """What this torch release lacks of the internals dropkit uses (empty when all is there).

    Example:
        >>> isinstance(probe_errors(), dict)
        True
    """
    return dict(_errors)


def require(name: str, feature: str) -> None:
    """RuntimeError naming ``feature`` if the internal ``name`` was not found in this torch."""
    if name in _errors:
        raise RuntimeError(
            f"{feature} needs torch internals that torch {torch.__version__} does not have "
            f"({name}: {_errors[name]}); dropkit cannot keep its guarantee here"
        )


def checkpoint_regions() -> list[tuple[str, object]]:
    """The checkpoint regions around the caller, innermost first, as ``(kind, region)``.

    ``kind`` is :data:`FORWARD` for a region's first forward and :data:`RECOMPUTE` for its
    recomputation in backward; ``region`` is an object unique to the region (both of its
    calls see the same one). A region re-entered while an outer one is recomputed shows up
    as a FORWARD entry inside a RECOMPUTE entry.
    """
    require("torch.utils.checkpoint layout", "checkpoint replay of dropkit layers")
    found = []
    frame = sys._getframe(1)
    while frame is not None:
        entry = _CODES.get(frame.f_code)
        if entry is not None:
            kind, local, attribute = entry
            region = frame.f_locals.get(local)
            if region is not None and attribute is not None:
                inner = getattr(region, "gi_frame", None)
                region = inner.f_locals.get(attribute) if inner is not None else None
            if region is not None:
                found.append((kind, region))
        frame = frame.f_back
    if not found:
        # A region entered without checkpoint() on the stack (torch.distributed's composable
        # checkpoint enters it from module hooks): its saved-tensor hook holds the region.
        region = _hooked_region()
        if region is not None:
            found.append((FORWARD, region))
    return found


def _hooked_region() -> object | None:
    hooks = _top_hooks(False) if _top_hooks is not None else None
    pack = hooks[0] if hooks else None
    if pack is None or "_checkpoint_hook" not in getattr(pack, "__qualname__", ""):
        return None
    cells = dict(zip(pack.__code__.co_freevars, pack.__closure__ or (), strict=False))
    cell = cells.get("frame")
    return cell.cell_contents if cell is not None else None


_functorch_wrapped = _probe(
    "functorch wrappers", lambda: torch._C._functorch.is_functorch_wrapped_tensor
) or (lambda x: False)


def _fake_mode_probe() -> Callable[[], bool]:
    get, key = torch._C._get_dispatch_mode, torch._C._TorchDispatchModeKey.FAKE
    return lambda: get(key) is not None


fake_mode_active = _probe("fake mode", _fake_mode_probe) or (lambda: False)
"""Whether a ``FakeTensorMode`` is active (new tensors are fake)."""


def _fake_type() -> type | None:
    from torch._subclasses.fake_tensor import FakeTensor

    return FakeTensor


_FAKE = _probe("fake tensors", _fake_type)
_DTENSOR: list = []  # DTensor's class, found at the first tensor that is not a plain one


def _dtensor_type() -> type | None:
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # a torch built without torch.distributed
            DTensor = None
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def tensor_kind(x: torch.Tensor) -> str:
    """What kind of tensor ``x`` is, as far as a kernel reading its memory is concerned.

    One of ``"dense"`` (strided memory a kernel may read), ``"fake"`` (a FakeTensor:
    ``FakeTensorMode`` or torch.compile's tracing), ``"meta"``, ``"dtensor"``, ``"nested"``,
    ``"sparse"`` (any layout but strided), ``"quantized"``, ``"functorch"`` (a vmap or grad
    wrapper) or ``"subclass <name>"`` (a tensor subclass with a dispatch of its own).

    Example:
        >>> tensor_kind(torch.ones(2)), tensor_kind(torch.ones(2, device="meta"))
        ('dense', 'meta')
    """
    cls = type(x)
    if _FAKE is not None and isinstance(x, _FAKE):
        return "fake"
    dtensor = _dtensor_type() if cls is not torch.Tensor else None
    if dtensor is not None and isinstance(x, dtensor):
        return "dtensor"
    if x.is_nested:
        return "nested"
    if x.layout != torch.strided:
        return "sparse"
    if x.is_quantized:
        return "quantized"
    if x.device.type == "meta":
        return "meta"
    if _functorch_wrapped(x):
        return "functorch"
    if getattr(cls, "__torch_dispatch__", None) is not torch.Tensor.__torch_dispatch__:
        return f"subclass {cls.__name__}"
    return "dense"


def local_box(
    shape: tuple[int, ...], mesh: Any, placements: tuple
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(local shape, global offset)`` of this rank's block of a DTensor of global ``shape``.

    Uses ``torch.distributed.tensor._utils.compute_local_shape_and_global_offset``, the rule
    DTensor itself shards by (uneven shards included).
    """
    from torch.distributed.tensor import _utils

    find = getattr(_utils, "compute_local_shape_and_global_offset", None)
    if find is None:
        raise RuntimeError(
            f"dropkit's DTensor support needs torch.distributed.tensor._utils."
            f"compute_local_shape_and_global_offset, which torch {torch.__version__} does not have"
        )
    local_shape, offset = find(shape, mesh, placements)
    return tuple(int(s) for s in local_shape), tuple(int(o) for o in offset)
