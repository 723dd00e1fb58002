"""What every dropout-family module shares: rate validation, the random stream, extra_repr."""

from __future__ import annotations

import threading
from collections import deque

import torch
from torch import nn

from dropkit.functional._checks import check_p
from dropkit.rng import blocks_for, check_seed, draw_seed, draw_seed_int, seed_to_signed, signed_to_seed

__all__ = ["RateModule", "StreamModule"]

# One lock for all layers: reserving an offset is a few tensor ops, so contention is
# negligible, and a module-level lock keeps modules picklable and deep-copyable.
_OFFSET_LOCK = threading.Lock()

# How many reservations a seeded module remembers for activation-checkpoint recomputation.
# Reservations that are never recomputed are the oldest and fall off the end.
_REPLAY_DEPTH = 1024


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass in this thread.

    torch.utils.checkpoint (both modes) recomputes a region's forward inside backward, and an
    ordinary forward never runs there, so a module called now is being recomputed.
    """
    return torch._C._current_graph_task_id() != -1


def _may_be_recomputed() -> bool:
    """Whether torch.utils.checkpoint could recompute the current forward call.

    use_reentrant=False runs the region under saved-tensor hooks; use_reentrant=True runs it with
    grad disabled. A grad-recording call under no hooks is never recomputed.
    """
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return not torch.is_grad_enabled() or hooks is not None


class StreamModule(nn.Module):
    """Base class of dropkit's stochastic modules: owns where the random bits come from.

    * ``seed=None, generator=None``: every call draws a fresh seed from torch's default
      generator (``torch.manual_seed`` makes a run reproducible, as with torch.nn.Dropout).
    * ``generator=g``: seeds are drawn from ``g``.
    * ``seed=s``: the module owns the stream ``(s, offset)``; both live in buffers that are part
      of the ``state_dict``, and each training call reserves the next ``ceil(words / 4)`` blocks
      (atomically, so concurrent calls never share an offset). A run resumed from a checkpoint
      therefore continues with exactly the masks an uninterrupted run would have used.

    Activation checkpointing recomputes a forward inside backward. A seeded module must then
    reuse the offset of the original call, not reserve a new one (that would give the backward
    a different mask than the forward used). It remembers its recent reservations and hands
    them back, newest first, when it is called during a backward pass: checkpointed regions are
    recomputed in reverse order of their forwards. One module called twice inside a single
    checkpointed region cannot be matched that way and raises RuntimeError on recomputation.
    """

    seed: torch.Tensor | None
    offset: torch.Tensor | None

    def __init__(self, *, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self._replay: deque[tuple[torch.Tensor | int, int]] = deque(maxlen=_REPLAY_DEPTH)
        self._replay_session: tuple[int, int] | None = None
        if seed is None:
            self.seed = None
            self.offset = None
        else:
            self.register_buffer("seed", torch.tensor(seed_to_signed(check_seed(seed)), dtype=torch.int64))
            self.register_buffer("offset", torch.zeros((), dtype=torch.int64))

    @staticmethod
    def _check_rate(p: object, name: str = "p") -> float:
        return check_p(p, name)

    def take_stream(self, words: int) -> tuple[torch.Tensor | int | None, torch.Tensor | int]:
        """Reserve ``words`` stream words; returns the ``(seed, offset)`` to pass to a function.

        * seeded module: its own seed and the next free offset;
        * ``generator=g``: a seed drawn from ``g`` here, at offset 0;
        * neither: ``(None, 0)``, and the function draws a fresh seed from torch's generator.

        Layers pass exactly these two values on, never the generator itself.
        """
        if self.seed is None and self.generator is None:
            # torch.utils.checkpoint saves and restores torch's default generators, so the seed a
            # recomputation draws is the one the original call drew.
            return None, 0
        if self.seed is None:
            # A user's generator is not restored by checkpointing: the seed drawn here is
            # remembered and replayed like a seeded module's offset.
            if torch.compiler.is_compiling():
                return draw_seed(self.generator), 0
            with _OFFSET_LOCK:
                if _in_backward() and self._replay:
                    return self._replayed(0), 0
                seed = draw_seed_int(self.generator)
                if _may_be_recomputed():
                    self._replay.append((seed, 0))
            return seed, 0
        blocks = blocks_for(words)
        if torch.compiler.is_compiling():
            offset = self.offset.clone()
            self.offset.add_(blocks)
            return self.seed, offset
        with _OFFSET_LOCK:
            if _in_backward() and self._replay:
                return self.seed, self._replayed(blocks)
            offset = self.offset.clone()
            self.offset.add_(blocks)
            if _may_be_recomputed():
                self._replay.append((offset, blocks))
        return self.seed, offset

    def _replayed(self, blocks: int) -> torch.Tensor | int:
        # One recomputed region runs inside one autograd node; a second call of this module
        # within the same node would need an older reservation than the newest one.
        node = torch._C._current_autograd_node()
        session = None if node is None else (torch._C._current_graph_task_id(), node._sequence_nr())
        if session is not None and session == self._replay_session:
            raise RuntimeError(
                f"{type(self).__name__} with its own seed or generator was called more than once "
                "inside one checkpointed region; its recomputed masks cannot be matched to the "
                "original calls. Give each call site its own layer."
            )
        self._replay_session = session
        position, reserved = self._replay.pop()
        if reserved != blocks:
            raise RuntimeError(
                f"recomputed call of {type(self).__name__} needs {blocks} stream blocks but the "
                f"original call reserved {reserved}: the checkpointed forward is not deterministic"
            )
        return position

    def stream_state(self) -> dict[str, int] | None:
        """The module's ``{"seed", "offset"}`` as unsigned ints, or None if it owns no stream."""
        if self.seed is None:
            return None
        return {"seed": signed_to_seed(int(self.seed)), "offset": signed_to_seed(int(self.offset))}

    def _stream_repr(self) -> str:
        state = self.stream_state()
        return "" if state is None else f", seed={state['seed']}"


class RateModule(StreamModule):
    """A stochastic module with a drop rate ``p`` and an ``inplace`` flag, as torch.nn.Dropout has.

    ``p`` is checked here and again on every call (schedules change it between steps);
    ``extra_repr`` shows ``p``, ``inplace`` and the module's seed, if it owns one.
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        self.p = self._check_rate(p)
        self.inplace = bool(inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + self._stream_repr()
