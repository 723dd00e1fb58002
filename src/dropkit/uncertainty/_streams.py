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

from dropkit.functional._checks import check_dims
from dropkit.layers import StreamModule
from dropkit.rng import derive_seed, seed_to_signed

__all__ = ["StreamOverride"]

class StreamOverride:
    """Give each named StreamModule a stream derived from a base seed; undo with :meth:`restore`.

    With ``share_batch=True`` each layer's ``shared_dims`` also gets dimension 0 (the batch),
    so one mask per layer call is shared by every input in the batch, and a check that the
    layer's input really has the batch first.
    """

    def __init__(self, modules: dict[str, StreamModule], *, share_batch: bool = False) -> None:
        self.modules = modules
        self.rows = 0
        self._saved: dict[str, tuple[object, object, object, object]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        if share_batch:
            lacking = [name for name, m in modules.items() if not hasattr(m, "shared_dims")]
            if lacking:
                raise ValueError(
                    "consistent=True shares one mask per pass over the batch through the layers' "
                    f"shared_dims, which these dropkit modules do not have: {lacking}"
                )
        for name, m in modules.items():
            self._saved[name] = (
                _read(m, "seed"),
                _read(m, "offset"),
                m.generator,
                getattr(m, "shared_dims", None),
            )
            if share_batch:
                self._hooks.append(m.register_forward_pre_hook(self._batch_hook(name)))

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
        """Give every layer back its own seed, offset, generator and shared_dims."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name, m in self.modules.items():
            seed, offset, generator, shared_dims = self._saved[name]
            _assign(m, "seed", seed)
            _assign(m, "offset", offset)
            m.generator = generator
            if shared_dims is not None:
                m.shared_dims = shared_dims


def _read(module: nn.Module, name: str) -> object:
    return module._buffers[name] if name in module._buffers else module.__dict__.get(name)


def _assign(module: nn.Module, name: str, value: object) -> None:
    # A seeded layer keeps seed/offset as buffers (the state_dict entries); an unseeded one as
    # plain None attributes. Either way the original object is put back on restore.
    if name in module._buffers:
        module._buffers[name] = value  # type: ignore[assignment]
    else:
        object.__setattr__(module, name, value)
