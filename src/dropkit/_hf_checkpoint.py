"""Hugging Face checkpoints of a patched model stay plain transformers checkpoints.

A seeded dropkit module keeps its stream in ``seed`` / ``offset`` buffers, which ``state_dict``
holds. ``PreTrainedModel.save_pretrained`` (and so every checkpoint ``Trainer`` writes) leaves
out the keys listed in the model's ``_keys_to_ignore_on_save``; :func:`hide_streams` adds the
stream keys of every seeded dropkit module there, so the saved weights have exactly the keys
of the unpatched model and load in a transformers that has never seen dropkit. The positions
travel elsewhere: ``Trainer`` checkpoints keep them in ``trainer_state.json`` through
:class:`dropkit.integrations.huggingface.DropkitCallback`, a ``save_pretrained`` directory in
the side file :func:`dropkit.integrations.huggingface.save_streams` writes.

transformers is never imported here: a model that is a ``PreTrainedModel`` has loaded it.
"""

from __future__ import annotations

import sys

from torch import nn

from dropkit import _torch
from dropkit.layers._base import StreamModule

__all__ = ["hide_streams", "show_streams"]

# Written into the PreTrainedModel's __dict__: the keys this module added to its ignore set.
_ADDED = "_dropkit_ignored_on_save"


def _pretrained_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    utils = sys.modules.get("transformers.modeling_utils")
    base = getattr(utils, "PreTrainedModel", None)
    if not isinstance(base, type):
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, base)]


def hide_streams(model: nn.Module) -> None:
    """Add the ``seed`` / ``offset`` keys of ``model``'s seeded dropkit modules to the
    ``_keys_to_ignore_on_save`` of every ``PreTrainedModel`` in ``model`` (itself included)."""
    for _, owner in _pretrained_models(model):
        keys = {
            f"{name}.{buffer}" if name else buffer
            for name, m in owner.named_modules(remove_duplicate=False)
            if isinstance(m, StreamModule) and _torch.buffer_slots(m).get("seed") is not None
            for buffer in ("seed", "offset")
        }
        ignored = owner._keys_to_ignore_on_save
        ignored = set() if ignored is None else set(ignored)
        new = keys - ignored
        if new:
            owner._keys_to_ignore_on_save = ignored | new
            owner.__dict__[_ADDED] = owner.__dict__.get(_ADDED, set()) | new


def show_streams(model: nn.Module) -> None:
    """Undo :func:`hide_streams` (the keys it added, and only those, leave the ignore sets)."""
    for _, owner in _pretrained_models(model):
        added = owner.__dict__.pop(_ADDED, None)
        if added:
            owner._keys_to_ignore_on_save = set(owner._keys_to_ignore_on_save) - added
