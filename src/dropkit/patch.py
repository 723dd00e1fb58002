"""Model surgery: find, replace and re-rate the dropout modules of a model dropkit did not build.

:func:`patch` swaps torch.nn's dropout modules (and timm's ``DropPath`` / torchvision's
``StochasticDepth`` and ``DropBlock2d/3d`` when those libraries are in use) for their dropkit
equivalents, so that a pretrained torchvision, timm or Hugging Face model gets dropkit's
reproducible stream, fast kernels and MC-dropout support without editing its code.
:func:`unpatch` puts the original module objects back. :func:`dropout_layers` and
:func:`set_dropout` inspect and re-rate. The module itself is callable: ``dropkit.patch(model)``
is ``dropkit.patch.patch(model)``, and ``from dropkit.patch import patch`` imports the function.

Some dropout cannot be reached by replacing a module, and :func:`patch` reports it instead of
pretending: a ``forward`` that calls ``F.dropout`` (or ``scaled_dot_product_attention`` with a
``dropout_p``) itself, a rate stored as a plain float (``nn.MultiheadAttention.dropout``), and a
dropout module whose ``p`` is read by its parent but which is never called (Hugging Face's
attention layers pass ``self.dropout.p`` to a functional attention kernel).
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from dropkit import _torch
from dropkit._attention_patch import (
    hf_dropout_child,
    hook_timm,
    restore_hf,
    switch_hf,
    timm_dropout_child,
    unhook_timm,
)
from dropkit._hf_checkpoint import hide_streams, show_streams
from dropkit._names import public_name
from dropkit._select import (
    TORCH_DROPOUTS,
    ModuleFilter,
    check_filter,
    drop_prob_path,
    family_modules,
    get_rate,
    matches,
    rate_attr,
    set_rate,
    third_party_classes,
)
from dropkit.functional._checks import check_mask_storage, check_p
from dropkit.layers._base import StreamModule
from dropkit.rng import check_seed, derive_seed

__all__ = [
    "DropoutLayer",
    "PatchReport",
    "Replacement",
    "Unreplaced",
    "patch",
    "unpatch",
    "dropout_layers",
    "set_dropout",
]

# Where a replacement keeps the module it replaced. Written into __dict__ directly so that
# nn.Module does not register the original as a child: it stays out of state_dict, parameters
# and repr, but travels with deepcopy and pickle, so a copied model can still be unpatched.
_ORIGINAL = "_dropkit_original"

# torch class name -> dropkit class name (same constructor arguments: p, inplace).
_TORCH_TO_DROPKIT = {cls.__name__: cls.__name__ for cls in TORCH_DROPOUTS}
# Third-party class name -> (dropkit class name, {source attribute: dropkit keyword}).
_THIRD_PARTY_TO_DROPKIT = {
    "DropPath": ("DropPath", {"scale_by_keep": "scale_by_keep"}),
    "StochasticDepth": ("StochasticDepth", {"mode": "mode"}),
    # torchvision's DropBlock: the same seed rate and block placement (a seed drops the block to
    # its lower right) where the block fits the map, and its normalisation count / (eps + kept).
    "DropBlock2d": ("DropBlock2d", {"block_size": "block_size", "inplace": "inplace", "eps": "eps"}),
    "DropBlock3d": ("DropBlock3d", {"block_size": "block_size", "inplace": "inplace", "eps": "eps"}),
}
# What a dropkit class does when it has no such keyword: a source module with this value can
# still be replaced faithfully, any other value cannot.
_IMPLIED = {"inplace": False, "scale_by_keep": True, "eps": 1e-6}

_FUNCTIONAL_CALL = re.compile(
    r"\b(?:F|functional|nn\.functional|torch)\.(dropout|dropout1d|dropout2d|dropout3d|alpha_dropout|"
    r"feature_alpha_dropout|scaled_dot_product_attention)\s*\("
)
_RATE_READ = re.compile(r"\bself\.(\w+)\.p\b")


class DropoutLayer(NamedTuple):
    """One dropout-family module of a model: qualified name, class name and drop rate.

    Example:
        >>> DropoutLayer("encoder.dropout", "Dropout", 0.1).p
        0.1
    """

    name: str
    type: str
    p: float


@dataclass(frozen=True)
class Replacement:
    """A module :func:`patch` replaced: where, from which class to which, rate, stream seed, and
    what it saves for backward (None for a class without ``mask_storage``).

    Example:
        >>> entry = patch(nn.Sequential(nn.Dropout(0.2)), seed=1).replaced[0]
        >>> entry.name, entry.original, entry.p, entry.seed == derive_seed(1, "0"), entry.mask_storage
        ('0', 'Dropout', 0.2, True, 'bits')
    """

    name: str
    original: str
    replacement: str
    p: float
    seed: int | None
    mask_storage: str | None


@dataclass(frozen=True)
class Unreplaced:
    """Dropout :func:`patch` found but could not replace, and why.

    Example:
        >>> patch(nn.Sequential(nn.LSTM(4, 4, num_layers=2, dropout=0.1))).unreplaced[0].reason
        'dropout rate stored as a float attribute dropout=0.1'
    """

    name: str
    type: str
    reason: str


@dataclass
class PatchReport:
    """What :func:`patch` did: ``replaced`` modules and ``unreplaced`` dropout with the reason.

    Classes are named with their modules, as they are imported (``torch.nn.Dropout``), so
    that the report says what was replaced by what.

    Example:
        >>> print(patch(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))))
        replaced 1 module(s)
          1: torch.nn.Dropout -> dropkit.Dropout (p=0.5)
    """

    replaced: list[Replacement] = field(default_factory=list)
    unreplaced: list[Unreplaced] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} module(s)"]
        lines += [f"  {r.name}: {_source_name(r.original)} -> {_dropkit_name(r.replacement)} (p={r.p})"
                  for r in self.replaced]
        if self.unreplaced:
            lines.append(f"not replaced: {len(self.unreplaced)}")
            lines += [f"  {u.name or '<root>'} ({u.type}): {u.reason}" for u in self.unreplaced]
        return "\n".join(lines)


def _source_name(name: str) -> str:
    """``torch.nn.Dropout`` for the class name ``Dropout`` of a module patch() replaces."""
    for cls in (*TORCH_DROPOUTS, nn.MultiheadAttention, *(c for c, _ in third_party_classes())):
        if cls.__name__ == name:
            return public_name(cls)
    return name


def _dropkit_name(name: str) -> str:
    cls = _dropkit_class(name)
    return public_name(cls) if cls is not None else f"dropkit.{name}"


def _dropkit_class(name: str) -> type | None:
    # Looked up at call time: layers added to dropkit later are picked up without a new mapping.
    import dropkit

    cls = getattr(dropkit, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def _accepts(cls: type, keyword: str) -> bool:
    return keyword in inspect.signature(cls.__init__).parameters


def _target(module: nn.Module) -> tuple[str, str, dict[str, str]] | None:
    """``(dropkit class name, rate attribute, extra attribute map)`` for a replaceable module."""
    for cls in TORCH_DROPOUTS:
        if type(module) is cls:
            return _TORCH_TO_DROPKIT[cls.__name__], "p", {"inplace": "inplace"}
    if type(module) is nn.MultiheadAttention:
        return "MultiheadAttention", "dropout", {}
    for cls, attr in third_party_classes():
        if type(module) is cls:
            name, extras = _THIRD_PARTY_TO_DROPKIT[cls.__name__]
            return name, attr, extras
    if drop_prob_path(module):
        # Hugging Face's *DropPath classes: per sample, scaled by 1 / keep_prob (DropPath's defaults).
        return "DropPath", "drop_prob", {}
    return None


def _build(
    module: nn.Module, name: str, seed: int | None, mask_storage: str | None
) -> tuple[nn.Module | None, str]:
    """The dropkit replacement of ``module`` and its class name, or ``(None, reason)``."""
    target_name, attr, extras = _target(module)  # type: ignore[misc]
    cls = _dropkit_class(target_name)
    if cls is None:
        return None, f"dropkit.{target_name} is not available in this version of dropkit"
    if target_name == "MultiheadAttention":
        return _build_attention(cls, module, None if seed is None else derive_seed(seed, name)), target_name
    kwargs = {}
    for source, keyword in extras.items():
        value = getattr(module, source)
        if _accepts(cls, keyword):
            kwargs[keyword] = value
        elif keyword not in _IMPLIED or _IMPLIED[keyword] != value:
            return None, f"dropkit.{target_name} has no {keyword!r} argument to carry {source}={value!r}"
    if seed is not None:
        if not _accepts(cls, "seed"):
            return None, f"dropkit.{target_name} takes no seed"
        kwargs["seed"] = derive_seed(seed, name)
    if mask_storage is not None and _accepts(cls, "mask_storage"):
        kwargs["mask_storage"] = mask_storage
    new = cls(float(getattr(module, attr)), **kwargs)
    return new, target_name


def _build_attention(cls: type, module: nn.MultiheadAttention, seed: int | None) -> nn.Module:
    """dropkit's MultiheadAttention sharing ``module``'s parameters (the same Parameter objects)."""
    new = cls(
        module.embed_dim, module.num_heads, dropout=float(module.dropout),
        bias=module.in_proj_bias is not None,
        add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn, kdim=module.kdim,
        vdim=module.vdim, batch_first=module.batch_first, device="meta", seed=seed,
    )
    new_slots, old_slots = _torch.parameter_slots(new), _torch.parameter_slots(module)
    for key in new_slots:
        new_slots[key] = old_slots[key]
    new.out_proj = module.out_proj
    return new


@functools.lru_cache(maxsize=256)
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _scan(name: str, module: nn.Module) -> list[Unreplaced]:
    """Dropout in ``module`` that replacing modules cannot reach."""
    if rate_attr(module) is not None:
        return []
    found = []
    kind = type(module).__name__
    if not isinstance(module, StreamModule):
        source = _forward_source(type(module))
        calls = sorted(set(_FUNCTIONAL_CALL.findall(source)))
        if calls:
            found.append(Unreplaced(name, kind, f"forward calls functional {', '.join(calls)}"))
        children = dict(module.named_children())
        for child in sorted(set(_RATE_READ.findall(source))):
            rate = getattr(children.get(child), "p", None)
            if child in children and f"self.{child}(" not in source and rate != 0:
                found.append(
                    Unreplaced(
                        name,
                        kind,
                        f"forward reads self.{child}.p as a float and never calls self.{child}; "
                        "the rate is honoured but the random stream is not dropkit's",
                    )
                )
    source = _forward_source(type(module))
    fields = _config_fields(type(module))
    for attr, value in vars(module).items():
        # A rate counts only if forward reads it (timm's ConvNeXt keeps drop_rate after building
        # its dropout module from it) and it is not 0 (no randomness to report).
        used = not source or re.search(rf"\bself\.{attr}\b", source) is not None
        if "drop" in attr and isinstance(value, float) and not attr.startswith("_") and value != 0 and used:
            field = fields.get(attr)
            found.append(Unreplaced(name, kind, _float_rate_reason(f"{attr}={value}", attr, field)))
    config = getattr(module, "config", None)
    for field in sorted(set(_CONFIG_READ.findall(source))):
        value = getattr(config, field, None)
        if isinstance(value, float) and value != 0:
            found.append(Unreplaced(name, kind, _float_rate_reason(f"config.{field}={value}", field, None)))
    return found


# ``self.<attr> = config.<field>`` in an ``__init__`` (Hugging Face's way of keeping a rate).
_CONFIG_FIELD = re.compile(r"\bself\.(\w+)\s*=\s*config\.(\w+)\s*$", re.MULTILINE)
# ``self.config.<field>`` read in a ``forward`` (wav2vec2's ``self.config.layerdrop``).
_CONFIG_READ = re.compile(r"\bself\.config\.(\w*drop\w*)\b")


@functools.lru_cache(maxsize=256)
def _config_fields(cls: type) -> dict[str, str]:
    """Attribute -> config field for the ``self.<attr> = config.<field>`` lines of ``cls.__init__``."""
    try:
        source = inspect.getsource(cls.__init__)
    except (OSError, TypeError):
        return {}
    return dict(_CONFIG_FIELD.findall(source))


def _float_rate_reason(where: str, attr: str, field: str | None) -> str:
    """Why a rate kept as a float cannot be replaced, naming the config field that sets it."""
    origin = f", set by config.{field}," if field else ""
    if "layerdrop" in attr:
        return (f"forward skips whole layers with probability {where}{origin} (LayerDrop) drawn from "
                "torch's generator; dropkit.LayerDrop does this on a stream for stacks of one's own")
    return f"dropout rate stored as a float attribute {where}{origin}"


def patch(
    model: nn.Module,
    *,
    include: ModuleFilter | None = None,
    exclude: ModuleFilter | None = None,
    seed: int | None = None,
    mask_storage: str | None = None,
) -> PatchReport:
    """Replace the dropout modules of ``model`` in place with their dropkit equivalents.

    ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout`` (and timm's
    ``DropPath`` / torchvision's ``StochasticDepth`` and ``DropBlock2d/3d`` when those libraries
    are imported) become the dropkit class of the same name with the same ``p``, ``inplace`` (or
    ``scale_by_keep`` / ``mode`` / ``block_size``) and train/eval state, on the device of the
    model. Subclasses are left alone (their ``forward`` may differ). A module shared under
    several names is replaced by one shared module. Without ``seed`` the replacements draw fresh
    seeds from torch's generator, as torch's layers do, and add nothing to the ``state_dict``;
    with ``seed`` each one owns the stream ``derive_seed(seed, qualified_name)`` and adds
    ``seed`` / ``offset`` buffers. A Hugging Face ``PreTrainedModel`` leaves those buffers out of
    ``save_pretrained`` (and ``Trainer`` checkpoints), whose files stay plain transformers
    checkpoints; see :mod:`dropkit.integrations.huggingface` for where the positions go.

    Args:
        model: the model to modify.
        include: only replace modules matching this: a glob on the qualified name
            (``"encoder.*"``), a module class, a callable ``(name, module) -> bool``, or a list of
            globs and classes. Default: all.
        exclude: skip modules matching this (same forms).
        seed: base seed of the per-layer streams; None for torch-style default seeding.
        mask_storage: "bits", "seed" or "bool" for every replacement that takes it (the report's
            ``mask_storage`` column shows what each replacement uses).

    Returns:
        A :class:`PatchReport` listing the replacements and the dropout that could not be
        replaced (functional calls in ``forward``, rates stored as floats, a missing dropkit
        class).

    Shape:
        Not applicable: the replaced modules keep the input and output shapes of the originals.

    Example:
        >>> layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
        >>> report = patch(layer, seed=0)
        >>> [r.name for r in report.replaced]
        ['self_attn', 'dropout', 'dropout1', 'dropout2']
        >>> type(layer.dropout1).__module__
        'dropkit.layers.dropout'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_filter(include, "include")
    check_filter(exclude, "exclude")
    if seed is not None:
        seed = check_seed(seed)
    if mask_storage is not None:
        mask_storage = check_mask_storage(mask_storage)
    device = _tensor_device(model)
    report = PatchReport()
    done: dict[int, nn.Module] = {}
    scanned: set[int] = set()
    # remove_duplicate=False: a module shared under two names must be swapped under both.
    for name, child in list(model.named_modules(remove_duplicate=False)):
        replace = bool(name) and _target(child) is not None
        replace = replace and matches(include, name, child, True) and not matches(exclude, name, child, False)
        if id(child) not in scanned:
            scanned.add(id(child))
            if not replace and not _route_attention(name, child, include, exclude, report):
                report.unreplaced += _scan(name, child)
        if not replace:
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if id(child) in done:
            setattr(parent, child_name, done[id(child)])
            continue
        new, kind = _build(child, name, seed, mask_storage)
        if new is None:
            report.unreplaced.append(Unreplaced(name, type(child).__name__, kind))
            continue
        new.train(child.training)
        if device is not None:
            new.to(device)
        new.__dict__[_ORIGINAL] = child
        setattr(parent, child_name, new)
        done[id(child)] = new
        holder = new.attn_dropout if isinstance(new, nn.MultiheadAttention) else new
        stream = holder.stream_state() if isinstance(holder, StreamModule) else None
        storage = getattr(holder, "mask_storage", None)
        report.replaced.append(
            Replacement(
                name, type(child).__name__, kind, get_rate(holder), stream and stream["seed"], storage
            )
        )
    hide_streams(model)
    if _target(model) is not None:
        report.unreplaced.append(
            Unreplaced("", type(model).__name__, "the root module cannot be replaced in place")
        )
    return report


def _hf_attention_child(module: nn.Module) -> str | None:
    """The dropout child whose rate a Hugging Face attention layer passes to its attention function."""
    source = _forward_source(type(module))
    if "attention_interface" not in source:
        return None
    children = dict(module.named_children())
    for child in sorted(set(_RATE_READ.findall(source))):
        if child in children and f"self.{child}(" not in source:
            return child
    return None


def _route_attention(
    name: str,
    module: nn.Module,
    include: ModuleFilter | None,
    exclude: ModuleFilter | None,
    report: PatchReport,
) -> bool:
    """Route a Hugging Face or timm attention layer's dropout through its (replaced) dropout child.

    Returns True when ``module`` is such a layer (handled, or reported with the reason).
    """
    if timm_dropout_child(module):
        child_name = "attn_drop"
    else:
        child_name = _hf_attention_child(module)
        if child_name is None:
            return False
    qualified = f"{name}.{child_name}" if name else child_name
    child = module.get_submodule(child_name)
    if not matches(include, qualified, child, True) or matches(exclude, qualified, child, False):
        return False
    if child_name == "attn_drop":
        hook_timm(module)
        return True
    reason = hf_dropout_child(module, child_name)
    if reason is not None:
        if getattr(child, "p", 0.0) != 0:
            report.unreplaced.append(Unreplaced(name, type(module).__name__, reason))
        return True
    switch_hf(module, child_name)
    return True


def _restore(original: nn.Module, replacement: nn.Module) -> None:
    """Carry the replacement's rate, inplace flag and train/eval state back to the original."""
    if isinstance(original, nn.MultiheadAttention):
        original.dropout = replacement.dropout
    else:
        set_rate(original, get_rate(replacement))
    if hasattr(original, "inplace") and hasattr(replacement, "inplace"):
        original.inplace = replacement.inplace
    original.train(replacement.training)


def unpatch(model: nn.Module) -> list[str]:
    """Put back the modules :func:`patch` replaced; returns the qualified names restored.

    The original objects come back with the replacement's current rate, ``inplace`` flag and
    train/eval state, so :func:`set_dropout` and ``model.eval()`` calls made while patched are
    kept.

    Shape:
        Not applicable.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2))
        >>> original = block[1]
        >>> _ = patch(block)
        >>> unpatch(block)
        ['1']
        >>> block[1] is original
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    restored = []
    show_streams(model)
    for name, child in list(model.named_modules(remove_duplicate=False)):
        restore_hf(child)
        unhook_timm(child)
        original = child.__dict__.get(_ORIGINAL)
        if original is None or not name:
            continue
        _restore(original, child)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, original)
        restored.append(name)
    return restored


def dropout_layers(model: nn.Module, *, include: ModuleFilter | None = None) -> list[DropoutLayer]:
    """Every dropout-family module of ``model`` as ``(name, type, p)``, in registration order.

    The family is torch.nn's dropout classes, dropkit's stochastic layers with a rate ``p``,
    timm's ``DropPath`` and torchvision's ``StochasticDepth``, ``DropBlock2d`` and
    ``DropBlock3d``.

    Shape:
        Not applicable.

    Example:
        >>> dropout_layers(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))
        [DropoutLayer(name='1', type='Dropout', p=0.1)]
    """
    return [DropoutLayer(n, type(m).__name__, get_rate(m)) for n, m in family_modules(model, include)]


def set_dropout(model: nn.Module, p: float, *, include: ModuleFilter | None = None) -> list[str]:
    """Set the drop rate of every dropout-family module (or those matching ``include``) to ``p``.

    Returns the qualified names changed. Rates stored as plain floats (see :func:`patch`'s
    report) are not touched.

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Dropout(0.5))
        >>> set_dropout(net, 0.3, include="2")
        ['2']
        >>> [layer.p for layer in dropout_layers(net)]
        [0.1, 0.3]
    """
    p = check_p(p)
    names = []
    for name, module in family_modules(model, include):
        set_rate(module, p)
        names.append(name)
    return names


def _tensor_device(model: nn.Module) -> torch.device | None:
    return next((t.device for t in (*model.parameters(), *model.buffers())), None)


class _CallableModule(types.ModuleType):
    """This module's type: calling ``dropkit.patch(...)`` calls :func:`patch`."""

    __call__ = staticmethod(patch)


sys.modules[__name__].__class__ = _CallableModule
