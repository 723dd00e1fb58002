"""Temporary streams for dropkit layers during MC prediction: reproducible and consistent masks.

A :class:`dropkit.layers.StreamModule` draws its masks from ``(self.seed, self.offset)`` when it
has a seed, and from a fresh seed per call otherwise. MC prediction with ``seed=`` or
``consistent=True`` gives each layer a stream of its own, derived from the caller's seed and
the layer's name, and puts the layer's own seed, offset and generator back afterwards, so
prediction never moves a seeded layer's training stream.
"""

from __future__ import annotations

import torch
from torch import nn

from dropkit import _torch
from dropkit.functional._checks import check_dims
from dropkit.layers import DropConnect, DropPath, EmbeddingDropout, StreamModule
from dropkit.rng import derive_seed, seed_to_signed

__all__ = ["StreamOverride"]

class StreamOverride:
    """Give each named StreamModule a stream derived from a base seed; undo with :meth:`restore`.

    With ``share_batch=True`` every layer draws one mask per call that all inputs of the batch
    share, so the masks depend on the pass and the layer but never on the batch:

    * layers with ``shared_dims`` (Dropout) get dimension 0 added to it, with a check that
      their input really has the batch first;
    * DropPath is switched to ``mode="batch"`` (one draw for the whole batch);
    * DropConnect, WeightDrop and EmbeddingDropout already draw masks over weights, whatever
      the batch;
    * other layers (their mask has one entry per sample) are refused with a ValueError.
    """

    def __init__(self, modules: dict[str, StreamModule], *, share_batch: bool = False) -> None:
        self.modules = modules
        self.rows = 0
        self._saved: dict[str, tuple[object, object, object, object, object]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        if share_batch:
            lacking = [
                f"{name} ({type(m).__name__})"
                for name, m in modules.items()
                if not (hasattr(m, "shared_dims") or isinstance(m, (DropPath, DropConnect, EmbeddingDropout)))
            ]
            if lacking:
                raise ValueError(
                    "consistent=True needs one mask per pass shared by the whole batch, which these "
                    f"dropkit modules cannot draw (their masks have one entry per sample): {lacking}"
                )
        for name, m in modules.items():
            self._saved[name] = (
                _read(m, "seed"),
                _read(m, "offset"),
                m.generator,
                getattr(m, "shared_dims", None),
                getattr(m, "mode", None) if isinstance(m, DropPath) else None,
            )
            if share_batch and hasattr(m, "shared_dims"):
                self._hooks.append(m.register_forward_pre_hook(self._batch_hook(name)))
            elif share_batch and isinstance(m, DropPath):
                m.mode = "batch"

    def _batch_hook(self, name: str):
        original = tuple(self._saved[name][3])  # type: ignore[arg-type]

        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != self.rows:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"consistent=True needs the batch as dimension 0 of every dropout layer's input; "
                    f"layer {name!r} got input {shape} in a batch of {self.rows} rows"
                )
            module.shared_dims = tuple(sorted(set(check_dims(original, x.dim())) | {0}))

        return hook

    def set_streams(self, base_seed: int, *parts: str | int) -> None:
        """Point every layer at ``(derive_seed(base_seed, *parts, name), offset 0)``."""
        for name, m in self.modules.items():
            old_seed = self._saved[name][0]
            device = old_seed.device if isinstance(old_seed, torch.Tensor) else torch.device("cpu")
            seed = seed_to_signed(derive_seed(base_seed, *parts, name))
            _assign(m, "seed", torch.tensor(seed, dtype=torch.int64, device=device))
            _assign(m, "offset", torch.zeros((), dtype=torch.int64, device=device))
            m.generator = None

    def restore(self) -> None:
        """Give every layer back its own seed, offset, generator, shared_dims and DropPath mode."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name, m in self.modules.items():
            seed, offset, generator, shared_dims, mode = self._saved[name]
            _assign(m, "seed", seed)
            _assign(m, "offset", offset)
            m.generator = generator
            if shared_dims is not None:
                m.shared_dims = shared_dims
            if mode is not None:
                m.mode = mode


def _read(module: nn.Module, name: str) -> object:
    buffers = _torch.buffer_slots(module)
    return buffers[name] if name in buffers else module.__dict__.get(name)


def _assign(module: nn.Module, name: str, value: object) -> None:
    # A seeded layer keeps seed/offset as buffers (the state_dict entries); an unseeded one as
    # plain None attributes. Either way the original object is put back on restore.
    buffers = _torch.buffer_slots(module)
    if name in buffers:
        buffers[name] = value
    else:
        object.__setattr__(module, name, value)
