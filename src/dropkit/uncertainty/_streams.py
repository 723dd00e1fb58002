"""Temporary streams for dropkit layers during MC prediction: reproducible and consistent masks.

A :class:`dropkit.layers.StreamModule` draws its masks from ``(self.seed, self.offset)`` when it
has a seed, and from a fresh seed per call otherwise. MC prediction with ``seed=`` or
``consistent=True`` lends each layer a stream of its own (:meth:`StreamModule.lend_stream`),
derived from the caller's seed and the layer's name; the layer's own seed, offset and generator
are never touched, so prediction never moves a seeded layer's training stream.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn

from dropkit.functional._checks import check_dims
from dropkit.layers import DropConnect, DropPath, EmbeddingDropout, StreamModule
from dropkit.rng import Stream, StreamProtocol, TensorStream, derive_seed, seed_to_signed

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
        self._saved: dict[str, tuple[object, object]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._lending = contextlib.ExitStack()
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
                getattr(m, "shared_dims", None),
                getattr(m, "mode", None) if isinstance(m, DropPath) else None,
            )
            if share_batch and hasattr(m, "shared_dims"):
                self._hooks.append(m.register_forward_pre_hook(self._batch_hook(name)))
            elif share_batch and isinstance(m, DropPath):
                m.mode = "batch"

    def _batch_hook(self, name: str):
        original = tuple(self._saved[name][0])  # type: ignore[arg-type]

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
        """Lend every layer the stream ``(derive_seed(base_seed, *parts, name), offset 0)``."""
        self._lending.close()
        for name, m in self.modules.items():
            seed = derive_seed(base_seed, *parts, name)
            self._lending.enter_context(m.lend_stream(_stream_on(seed, m.seed)))

    def restore(self) -> None:
        """Give every layer back its own stream, shared_dims and DropPath mode."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._lending.close()
        for name, m in self.modules.items():
            shared_dims, mode = self._saved[name]
            if shared_dims is not None:
                m.shared_dims = shared_dims
            if mode is not None:
                m.mode = mode


# Concurrent calls of one layer on a device must never share an offset (as for its own stream).
_TAKE_LOCK = threading.Lock()


def _stream_on(seed: int, own_seed: torch.Tensor | None) -> StreamProtocol:
    """The stream ``(seed, 0)`` where the layer keeps its own: ints on the CPU (and for unseeded
    layers), device tensors beside a seeded layer's buffers elsewhere."""
    if own_seed is None or own_seed.device.type == "cpu":
        return Stream(seed)
    device = own_seed.device
    return TensorStream(torch.tensor(seed_to_signed(seed), dtype=torch.int64, device=device),
                        torch.zeros((), dtype=torch.int64, device=device), lock=_TAKE_LOCK)
