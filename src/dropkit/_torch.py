"""The one place that touches torch's private functions and internals.

dropkit needs a few things torch has no public API for; every one of them is reached through
this module, and docs/design.md lists each with the torch release that introduced it:

* whether a call runs inside a backward pass (``torch._C._current_graph_task_id``);
* whether saved-tensor hooks are active (``torch._C._autograd._top_saved_tensors_default_hooks``);
* which activation-checkpoint region (``torch.utils.checkpoint``) a call runs in, and whether
  it is the region's first forward or its recomputation during backward;
* the C entry of an autograd Function, whether functorch transforms are active, and whether
  ``torch.jit.trace`` is recording (``torch._C``);
* softmax's backward formula (``torch._softmax_backward_data``), the batch-norm base class
  (``torch.nn.modules.batchnorm._BatchNorm``), DDP's list of buffers it must not broadcast, and
  the dicts in which ``nn.Module`` keeps its parameters, buffers and children.
* what kind of tensor an op received (:func:`tensor_kind`: fake, functorch-wrapped, DTensor,
  ...), so that no kernel is handed memory it cannot read;
* which block of a DTensor's global index space a rank holds (:func:`local_box`).

They are looked up once, at import. A torch release that lacks one gets a clear RuntimeError
from :func:`require` when the feature that needs it is used, or a public fallback where one
gives the same result, never a silent wrong answer.
:data:`SINCE` records the first release that has each internal dropkit does not find on every
supported release (torch >= 2.5.1).

How checkpoint regions are found: both checkpoint modes call the user's function from a
handful of known functions of ``torch.utils.checkpoint``, and keep the region's state in one of
their local variables (the autograd context ``ctx`` in reentrant mode; the ``_CheckpointFrame``
in non-reentrant mode). :func:`checkpoint_regions` walks the Python call stack from the caller
outwards, compares each frame's code object with those functions, and returns the region
objects it passes, innermost first, each marked as a first forward or a recomputation. If this
torch's layout of ``torch.utils.checkpoint`` is not the one expected, a call with no frame of
that module on its stack (plain training, MC dropout under ``no_grad``) still runs: only a call
inside a checkpoint region is refused.
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
    "SINCE",
    "TORCH_RELEASE",
    "probe_errors",
    "release",
    "require",
    "checkpoint_regions",
    "graph_task_id",
    "top_hooks",
    "function_apply",
    "functorch_active",
    "tracing_state",
    "softmax_backward",
    "BATCH_NORM_TYPES",
    "parameter_slots",
    "buffer_slots",
    "child_slots",
    "ddp_ignore_buffers",
    "tensor_kind",
    "fake_mode_active",
    "local_box",
]

FORWARD, RECOMPUTE = "forward", "recompute"
_CHECKPOINT_MODULE = "torch.utils.checkpoint"

# The first torch release with each internal that some supported release lacks. Without the
# saved-tensor hooks query (torch < 2.8) the checkpoint pre-filter always says "maybe", and a
# region that torch.distributed's composable checkpoint enters from module hooks cannot be seen.
SINCE = {"saved-tensor hooks": (2, 8)}

_errors: dict[str, str] = {}


def release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"2.5.1+cu124"`` or ``"2.14.0a0"``.

    Example:
        >>> release("2.5.1+cu124")
        (2, 5)
    """
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        raise ValueError(f"cannot read a release number from the version {version!r}") from None


TORCH_RELEASE = release(torch.__version__)


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
    and checks :data:`functorch_active` first can call it directly. torch.compile traces the C
    entry on the releases CI runs it on (2.13 and later); older releases' torch.compile does not
    know it (torch 2.5: "Graph break due to unsupported builtin"), so there the public
    ``function.apply`` is returned: the same result, a few Python calls slower.
    """
    if TORCH_RELEASE < (2, 13):
        return function.apply
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


_LAYOUT = "torch.utils.checkpoint layout"
_CODES: dict[Any, tuple[str, str, str | None]] = {}


def _probe_checkpoint_layout() -> None:
    """Find the checkpoint functions of this torch (again: tests simulate a torch without them)."""
    global _CODES
    _errors.pop(_LAYOUT, None)
    _CODES = _probe(_LAYOUT, _checkpoint_codes) or {}


_probe_checkpoint_layout()


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
        since = SINCE.get(name)
        newer = f"; torch >= {since[0]}.{since[1]} has it" if since else ""
        raise RuntimeError(
            f"{feature} needs torch internals that torch {torch.__version__} does not have "
            f"({name}: {_errors[name]}{newer}); dropkit cannot keep its guarantee here"
        )


def checkpoint_regions() -> list[tuple[str, object]]:
    """The checkpoint regions around the caller, innermost first, as ``(kind, region)``.

    ``kind`` is :data:`FORWARD` for a region's first forward and :data:`RECOMPUTE` for its
    recomputation in backward; ``region`` is an object unique to the region (both of its
    calls see the same one). A region re-entered while an outer one is recomputed shows up
    as a FORWARD entry inside a RECOMPUTE entry.
    """
    frame = sys._getframe(1)
    if not _CODES:
        # This torch's checkpoint layout is unknown: refuse inside a region, and only there.
        if _in_checkpoint(frame):
            require(_LAYOUT, "a dropkit layer inside torch.utils.checkpoint (its masks replayed exactly)")
        return []
    found = []
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


def _in_checkpoint(frame: Any) -> bool:
    """Whether a function of torch.utils.checkpoint is on the stack from ``frame`` outwards, or
    its pack hook is the active saved-tensor hook: module names only, no layout assumed."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_CHECKPOINT_MODULE):
            return True
        frame = frame.f_back
    hooks = _top_hooks(False) if _top_hooks is not None else None
    pack = hooks[0] if isinstance(hooks, tuple) and hooks else None
    return getattr(pack, "__module__", None) == _CHECKPOINT_MODULE


def _hooked_region() -> object | None:
    hooks = _top_hooks(False) if _top_hooks is not None else None
    pack = hooks[0] if hooks else None
    if pack is None or "_checkpoint_hook" not in getattr(pack, "__qualname__", ""):
        return None
    cells = dict(zip(pack.__code__.co_freevars, pack.__closure__ or (), strict=False))
    cell = cells.get("frame")
    return cell.cell_contents if cell is not None else None


# --- private names outside torch._C ------------------------------------------------------------

_softmax_backward_data = _probe("softmax backward", lambda: torch._softmax_backward_data)


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of ``softmax`` at its output ``probs``, given the output's gradient ``grad``.

    ``probs * (grad - (grad * probs).sum(dim))``, by torch's own kernel (the one autograd uses
    for ``torch.softmax``, so the result matches it bit for bit) where this torch has it, by
    that formula otherwise.

    Example:
        >>> p = torch.softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
        >>> g = torch.tensor([[1.0, 0.0, 0.0]])
        >>> torch.allclose(softmax_backward(g, p, -1), p * (g - (g * p).sum(-1, keepdim=True)))
        True
    """
    if _softmax_backward_data is not None:
        return _softmax_backward_data(grad, probs, dim, probs.dtype)
    return probs * (grad - (grad * probs).sum(dim, keepdim=True))


# Every batch-norm layer of torch.nn (and of libraries that subclass torch's base class); a torch
# without the private base gets the public classes.
_batch_norm_base = _probe("batch-norm base class", lambda: torch.nn.modules.batchnorm._BatchNorm)
BATCH_NORM_TYPES: tuple[type, ...] = (_batch_norm_base,) if _batch_norm_base is not None else (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
)


def parameter_slots(module: torch.nn.Module) -> dict[str, Any]:
    """The dict in which ``module`` keeps its own parameters (name -> Parameter or None).

    A write here replaces a parameter as it is, without ``nn.Module.__setattr__``'s checks and
    registration hooks (model surgery that hands one module another's Parameter objects).
    """
    return module._parameters


def buffer_slots(module: torch.nn.Module) -> dict[str, Any]:
    """The dict in which ``module`` keeps its own buffers (name -> Tensor or None)."""
    return module._buffers


def child_slots(module: torch.nn.Module) -> dict[str, Any]:
    """The dict in which ``module`` keeps its children; ``.get(name)`` is a child or None,
    never an attribute of another kind that happens to have that name."""
    return module._modules


def ddp_ignore_buffers(model: torch.nn.Module, names: list[str]) -> None:
    """Add ``names`` (full buffer names) to those ``DistributedDataParallel`` neither broadcasts
    nor syncs for ``model``; the names already listed stay."""
    from torch.nn.parallel import DistributedDataParallel

    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, ignored + [n for n in names if n not in ignored]
    )
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
