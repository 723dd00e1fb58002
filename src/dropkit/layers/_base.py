"""What every dropout-family module shares: rate validation, the random stream, extra_repr."""

from __future__ import annotations

import threading

import torch
from torch import nn

from dropkit.functional._checks import check_p
from dropkit.rng import blocks_for, check_seed, seed_to_signed, signed_to_seed

__all__ = ["StreamModule"]

# One lock for all layers: reserving an offset is a few tensor ops, so contention is
# negligible, and a module-level lock keeps modules picklable and deep-copyable.
_OFFSET_LOCK = threading.Lock()


class StreamModule(nn.Module):
    """Base class of dropkit's stochastic modules: owns where the random bits come from.

    * ``seed=None, generator=None``: every call draws a fresh seed from torch's default
      generator (``torch.manual_seed`` makes a run reproducible, as with torch.nn.Dropout).
    * ``generator=g``: seeds are drawn from ``g``.
    * ``seed=s``: the module owns the stream ``(s, offset)``; both live in buffers that are part
      of the ``state_dict``, and each training call reserves the next ``ceil(words / 4)`` blocks
      (atomically, so concurrent calls never share an offset). A run resumed from a checkpoint
      therefore continues with exactly the masks an uninterrupted run would have used.
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
        if seed is None:
            self.seed = None
            self.offset = None
        else:
            self.register_buffer("seed", torch.tensor(seed_to_signed(check_seed(seed)), dtype=torch.int64))
            self.register_buffer("offset", torch.zeros((), dtype=torch.int64))

    @staticmethod
    def _check_rate(p: object, name: str = "p") -> float:
        return check_p(p, name)

    def take_stream(self, words: int) -> tuple[torch.Tensor | None, torch.Tensor | int]:
        """Reserve ``words`` stream words; returns the ``(seed, offset)`` to pass to a function.

        For an unseeded module this is ``(None, 0)`` and the function draws a fresh seed.
        """
        if self.seed is None:
            return None, 0
        blocks = blocks_for(words)
        if torch.compiler.is_compiling():
            offset = self.offset.clone()
            self.offset.add_(blocks)
        else:
            with _OFFSET_LOCK:
                offset = self.offset.clone()
                self.offset.add_(blocks)
        return self.seed, offset

    def stream_state(self) -> dict[str, int] | None:
        """The module's ``{"seed", "offset"}`` as unsigned ints, or None if it owns no stream."""
        if self.seed is None:
            return None
        return {"seed": signed_to_seed(int(self.seed)), "offset": signed_to_seed(int(self.offset))}

    def _stream_repr(self) -> str:
        state = self.stream_state()
        return "" if state is None else f", seed={state['seed']}"
