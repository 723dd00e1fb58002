"""What every dropout-family module shares: where its random words come from, and its rate.

A module never computes how many words a call uses. It hands a stream to the function
(:meth:`StreamModule.stream`), and the function reserves exactly what it draws with
``stream.take(words)``. What the stream is depends on how the module was built:

* ``seed=s``: the module owns the stream ``(s, offset)``; both live in int64 buffers (saved in
  the ``state_dict``, moved by ``.to()``) and every draw advances ``offset`` in place. On the
  CPU the buffers are read and written through NumPy views of their memory; on a GPU (and
  under torch.compile) they stay tensors, read by the kernels, with no host sync.
* ``generator=g``: each call draws a fresh seed from ``g`` (at offset 0).
* neither: each call draws a fresh seed from torch's default generator, so
  ``torch.manual_seed`` makes a run reproducible, as with torch.nn.Dropout.

Activation checkpointing runs a region's forward twice: once, then again in backward to
rebuild what it did not save. The recomputation must use the masks of the first run. Each
call made inside a checkpoint region records the positions it took in that region (and in
every region around it); a call made while a region is recomputed replays them in order.
Calls outside regions, with or without grad, record nothing and so can never be confused with
a region's. A recomputation that asks for other words than the first run took raises.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

from dropkit import _torch, ops
from dropkit.functional._checks import check_generator, check_p
from dropkit.rng import (
    BufferStream,
    DrawnStream,
    Position,
    StreamProtocol,
    TensorStream,
    check_seed,
    seed_to_signed,
    signed_to_seed,
)

__all__ = ["RateModule", "StreamModule"]

# timm's name for a layer's rate: reading or setting ``drop_prob`` is reading or setting ``p``.
DROP_PROB = property(lambda self: self.p, lambda self, value: setattr(self, "p", value),
                     doc="timm's name for :attr:`p` (reading or setting one is reading or setting the other)")

_top_hooks, _graph_task_id, _tracing_state = _torch.top_hooks, _torch.graph_task_id, _torch.tracing_state

# Concurrent eager calls of one seeded module must never share an offset.
_TAKE_LOCK = threading.Lock()


class _RecordingStream:
    """A stream (:class:`dropkit.rng.StreamProtocol`) that takes from ``inner`` and appends each
    position to the logs of the enclosing regions."""

    __slots__ = ("inner", "logs")

    def __init__(self, inner: StreamProtocol, logs: list[list]) -> None:
        self.inner, self.logs = inner, logs

    def take(self, words: int) -> Position:
        position = self.inner.take(words)
        for log in self.logs:
            log.append((position, words))
        return position


class _ReplayStream:
    """A stream (:class:`dropkit.rng.StreamProtocol`) that hands out the positions a region's
    first forward took, in the order it took them.

    Regions entered anew while that region is recomputed (nested checkpoints) record the
    replayed positions, for their own recomputation later.
    """

    __slots__ = ("module", "log", "cursor", "key", "logs")

    def __init__(self, module: nn.Module, log: list, cursor: dict, key: object, logs: list[list]) -> None:
        self.module, self.log, self.cursor, self.key, self.logs = module, log, cursor, key, logs

    def take(self, words: int) -> Position:
        k = self.cursor.get(self.key, 0)
        name = type(self.module).__name__
        if k >= len(self.log):
            if not self.log:
                # Nothing recorded: the forward ran in a region dropkit could not see, which on a
                # torch without the saved-tensor hooks query is torch.distributed's composable one.
                _torch.require("saved-tensor hooks", "checkpoint replay in a region entered from module "
                               "hooks (torch.distributed's composable checkpoint)")
            raise RuntimeError(
                f"a checkpointed region was recomputed and called {name} more often than its "
                "forward did: the region is not deterministic, so its masks cannot be replayed"
            )
        position, taken = self.log[k]
        if taken != words:
            raise RuntimeError(
                f"recomputed call of {name} draws {words} stream words but the original call drew "
                f"{taken}: the checkpointed forward is not deterministic"
            )
        self.cursor[self.key] = k + 1
        for log in self.logs:
            log.append((position, words))
        return position


def _region_log(region: object, module: nn.Module) -> list:
    streams = getattr(region, "_dropkit_streams", None)
    if streams is None:
        streams = {}
        region._dropkit_streams = streams  # type: ignore[attr-defined]
    return streams.setdefault(module, [])


class StreamModule(nn.Module):
    """Base class of dropkit's stochastic modules: owns where the random words come from.

    Args:
        seed: give the module its own stream ``(seed, 0)``, kept in the ``seed`` and ``offset``
            buffers of the ``state_dict``; a resumed run continues with exactly the masks an
            uninterrupted run would have used. A ``state_dict`` without these two keys (saved
            before :func:`dropkit.patch`) loads even with ``strict=True``, and the module keeps
            its stream.
        generator: draw a fresh seed per call from this torch.Generator.

    With neither, seeds come from torch's default generator. See the module docstring for
    activation checkpointing.

    Example:
        >>> from dropkit import Dropout
        >>> m = Dropout(0.5, seed=3)
        >>> _ = m(torch.ones(10))
        >>> m.stream_state()  # ten words: three 4-word blocks
        {'seed': 3, 'offset': 3}
    """

    seed: torch.Tensor | None
    offset: torch.Tensor | None
    # A stream lent by another party (lend_stream); a class default, so old pickles have one.
    _lent: StreamProtocol | None = None

    def __init__(self, *, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        self.generator = check_generator(generator)
        self._own: BufferStream | None = None
        if seed is None:
            self.seed = None
            self.offset = None
        else:
            self.register_buffer("seed", torch.tensor(seed_to_signed(check_seed(seed)), dtype=torch.int64))
            self.register_buffer("offset", torch.zeros((), dtype=torch.int64))

    # Attributes checked whenever they are set: name -> check returning the stored value.
    _checked_attributes: dict = {}

    def __setattr__(self, name: str, value: object) -> None:
        check = self._checked_attributes.get(name)
        super().__setattr__(name, value if check is None else check(value))

    def stream(self) -> StreamProtocol:
        """The stream this call draws from (see the module docstring); call it once per forward."""
        if _tracing_state() is not None:
            ops.refuse_tracing()
        if ops.compiling():
            return self._own_stream(True)
        # Could this call be in a checkpoint region? (dropkit._torch's pre-filter, inlined.)
        if not torch.is_grad_enabled() or _top_hooks(False) is not None or _graph_task_id() != -1:
            return self._checkpoint_stream()
        # The common case of _own_stream written out (the per-call path): the cached stream over
        # this module's CPU buffers, while they are the same tensors and no stream is lent.
        own, buffers = self._own, self._buffers
        if own is not None and self._lent is None and own.seed_buffer is buffers.get("seed") \
                and own.offset_buffer is buffers.get("offset"):
            return own
        return self._own_stream(False)

    @contextlib.contextmanager
    def lend_stream(self, stream: StreamProtocol) -> Iterator[StreamModule]:
        """Draw from ``stream`` instead of the module's own stream until the block ends.

        The module's seed, offset and generator are left as they are: a seeded module resumes
        its own stream afterwards where it stood. Lending again inside the block lends anew;
        the previous lender is back when the inner block ends. MC prediction lends each layer
        a stream derived from the caller's seed this way (:mod:`dropkit.uncertainty`).

        Example:
            >>> from dropkit import Dropout
            >>> from dropkit.rng import Stream
            >>> m = Dropout(0.5, seed=3)
            >>> with m.lend_stream(Stream(9)):
            ...     y = m(torch.ones(8))
            >>> torch.equal(y, Dropout(0.5, seed=9)(torch.ones(8))), m.stream_state()
            (True, {'seed': 3, 'offset': 0})
        """
        if not callable(getattr(stream, "take", None)):
            raise TypeError(f"lend_stream needs a stream with a take(words) method, got "
                            f"{type(stream).__name__}")
        previous, self._lent = self._lent, stream
        try:
            yield self
        finally:
            self._lent = previous

    def _own_stream(self, compiling: bool) -> StreamProtocol:
        lent = self._lent
        if lent is not None:
            return lent
        seed = self._buffers.get("seed")
        if seed is None:
            if compiling:
                return TensorStream(None, torch.zeros((), dtype=torch.int64), self.generator)
            return DrawnStream(self.generator)
        offset = self._buffers["offset"]
        if compiling:
            return TensorStream(seed, offset)
        own = self._own
        if own is not None and own.seed_buffer is seed and own.offset_buffer is offset:
            return own
        if seed.device.type != "cpu" or type(seed) is not torch.Tensor:  # a GPU's, or fake buffers
            return TensorStream(seed, offset, lock=_TAKE_LOCK)
        self._own = BufferStream(seed, offset)
        return self._own

    def _checkpoint_stream(self) -> StreamProtocol:
        regions = _torch.checkpoint_regions()
        entered = []  # regions whose first forward this is, innermost first
        for kind, region in regions:
            if kind == _torch.RECOMPUTE:
                cursors = getattr(region, "_dropkit_cursors", None)
                if cursors is None:
                    cursors = region._dropkit_cursors = {}  # type: ignore[attr-defined]
                key = (self, _graph_task_id())
                return _ReplayStream(self, _region_log(region, self), cursors, key, entered)
            entered.append(_region_log(region, self))
        own = self._own_stream(False)
        return _RecordingStream(own, entered) if entered else own

    def __getstate__(self) -> dict:
        # The cached stream views the buffers' memory; a copy must build its own from its buffers.
        state = self.__dict__.copy()
        state["_own"] = None
        state.pop("_lent", None)  # a lent stream is the lender's, not the copy's
        return state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        for name in ("seed", "offset"):
            value = state_dict.get(prefix + name)
            if value is None or self._buffers.get(name) is None:
                continue
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.numel() != 1:
                got = f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(
                    value, torch.Tensor) else type(value).__name__
                # Refused before anything is copied: a partly loaded stream would be worse.
                raise TypeError(
                    f"{prefix}{name} must be a one-element int64 tensor (the stream position's "
                    f"bits), got a {got}; dropkit never truncates a stream position"
                )
        missing_before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # A state_dict saved before patch() (or from torch's own layer) has no stream position:
        # it loads with strict=True and the layer keeps the stream it was built with.
        stream_keys = (prefix + "seed", prefix + "offset")
        missing_keys[missing_before:] = [k for k in missing_keys[missing_before:] if k not in stream_keys]

    def stream_state(self) -> dict[str, int] | None:
        """The module's ``{"seed", "offset"}`` as unsigned ints, or None if it owns no stream."""
        if self.seed is None:
            return None
        return {"seed": signed_to_seed(int(self.seed)), "offset": signed_to_seed(int(self.offset))}

    def _stream_repr(self) -> str:
        state = self.stream_state()
        return "" if state is None else f", seed={state['seed']}"

    def _get_name(self) -> str:
        # nn.Module's repr names a module by this; dropkit's own classes say that they are
        # dropkit's (``dropkit.Dropout(p=0.5, inplace=False, seed=42)``), so that a patched
        # model never prints like the torch model it replaced. Defined here, on the base that
        # comes before any torch class in a layer's bases, so it wins in the MRO.
        # A user's subclass keeps its own name, as torch prints it.
        from dropkit._names import repr_name

        return repr_name(self)


class RateModule(StreamModule):
    """A stochastic module with a drop rate ``p`` and an ``inplace`` flag, as torch.nn.Dropout has.

    ``p`` is checked whenever it is set (in the constructor, by a schedule, by hand), so a
    forward never checks it again; ``extra_repr`` shows ``p``, ``inplace`` and the seed.

    Example:
        >>> from dropkit import Dropout
        >>> m = Dropout(0.2)
        >>> m.p = 1.5
        Traceback (most recent call last):
        ...
        ValueError: p must be a probability in [0, 1], got 1.5
    """

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        self.p = p
        self.inplace = bool(inplace)

    _checked_attributes = {"p": check_p}

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + self._stream_repr()

