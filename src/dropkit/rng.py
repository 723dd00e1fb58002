"""The dropkit random stream ("philox-v1"): Philox4x32-10 and the (seed, offset) contract.

Every mask in dropkit is a pure function of ``(seed, offset, shape, p)``. This module is the
pure-torch statement of that function; every backend (reference, native CPU, Triton) must
reproduce it bit for bit. The full specification, with test vectors, is docs/rng.md.

Philox4x32-10 is the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel
Random Numbers: As Easy as 1, 2, 3" (SC'11), as published in the Random123 library.

Words are held in ``torch.int64`` tensors with values in ``[0, 2**32)``: torch has no full
set of unsigned 32-bit operations on every device, and the 32x32 -> 64-bit products are
split into 16-bit halves so that no intermediate ever leaves the signed 64-bit range.
"""

from __future__ import annotations

import hashlib
import numbers
import threading
from typing import NoReturn, Protocol

import torch

from dropkit import _torch

__all__ = [
    "STREAM_VERSION",
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "philox4x32",
    "philox_words",
    "keep_threshold",
    "words_to_uniform",
    "blocks_for",
    "check_seed",
    "check_offset",
    "draw_seed",
    "draw_seed_int",
    "derive_seed",
    "seed_to_signed",
    "signed_to_seed",
    "Position",
    "StreamProtocol",
    "Stream",
    "DrawnStream",
    "BufferStream",
    "TensorStream",
    "TracedStream",
    "check_position",
    "check_generator",
    "open_stream",
    "refuse_tracing",
]

STREAM_VERSION = "philox-v1"

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

_MASK32 = 0xFFFFFFFF
_U64 = 1 << 64


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as an int after checking it is an integer in ``[0, 2**64)``.

    Raises:
        TypeError: if ``seed`` is not an integer (bool is refused too).
        ValueError: if ``seed`` is negative or not below ``2**64``.
    """
    if type(seed) is int and 0 <= seed < _U64:  # the common case, checked without ABC lookups
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {seed!r} of type {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


def check_offset(offset: object) -> int:
    """Return ``offset`` as an int after checking it is an integer in ``[0, 2**64)``."""
    return check_seed(offset, name="offset")


def blocks_for(n: int) -> int:
    """Stream blocks (of four 32-bit words) that a call using ``n`` words consumes: ceil(n / 4)."""
    return (n + 3) // 4


def keep_threshold(p: float) -> int:
    """The integer threshold ``t = round(p * 2**32)`` (float64, ties to even).

    A word ``w`` keeps its element iff ``w >= t``; so ``p = 0`` keeps everything and ``p = 1``
    (``t = 2**32``) drops everything.

    Example:
        >>> keep_threshold(0.5)
        2147483648
    """
    return int(round(float(p) * 4294967296.0))


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``a * m`` for 32-bit ``a`` and constant ``m``, overflow-free."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo  # < 2**48
    p_hi = a * m_hi  # < 2**48
    s = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    lo = s & _MASK32
    hi = (p_hi >> 16) + (s >> 32)
    return hi, lo


def _philox_rounds(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int,
    k1: int,
    rounds: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox4x32(
    counter: tuple[int, int, int, int], key: tuple[int, int], rounds: int = 10
) -> tuple[int, int, int, int]:
    """Philox4x32 with ``rounds`` rounds of one 128-bit counter under one 64-bit key.

    Each round computes, with ``mulhi``/``mullo`` the halves of a 32x32 -> 64-bit product::

        (c0, c1, c2, c3) <- (mulhi(M1, c2) ^ c1 ^ k0, mullo(M1, c2),
                             mulhi(M0, c0) ^ c3 ^ k1, mullo(M0, c0))

    and the key is bumped by ``(W0, W1)`` between rounds, with M0 = 0xD2511F53,
    M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85 (Salmon et al., SC'11).

    Args:
        counter: four 32-bit words.
        key: two 32-bit words.
        rounds: number of rounds (10 is the standard, and the one dropkit uses).

    Returns:
        The four 32-bit output words, in Philox output order.

    Example:
        >>> [hex(w) for w in philox4x32((0, 0, 0, 0), (0, 0))]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    if len(counter) != 4 or len(key) != 2:
        raise ValueError(f"counter needs 4 words and key 2, got {counter!r} and {key!r}")
    for w in (*counter, *key):
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 0 <= int(w) <= _MASK32:
            raise ValueError(f"Philox words must be ints in [0, 2**32), got {w!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative int, got {rounds!r}")
    c = [torch.tensor([int(w)], dtype=torch.int64) for w in counter]
    out = _philox_rounds(*c, int(key[0]), int(key[1]), int(rounds))
    return tuple(int(w.item()) for w in out)  # type: ignore[return-value]


def philox_words(
    seed: int, offset: int, n: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The first ``n`` words of the stream ``(seed, offset)`` as an int64 tensor of shape (n,).

    Block ``j`` uses the counter ``c = offset + j`` (mod 2**64) laid out as
    ``(c mod 2**32, c >> 32, 0, 0)`` under the key ``(seed mod 2**32, seed >> 32)`` and gives
    the words ``w[4j] .. w[4j + 3]``.

    Example:
        >>> hex(int(philox_words(0, 0, 1)[0]))
        '0x6627e8d5'
    """
    seed, offset = check_seed(seed), check_offset(offset)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    nblocks = blocks_for(n)
    j = torch.arange(nblocks, dtype=torch.int64, device=device)
    lo = (offset & _MASK32) + j
    c0 = lo & _MASK32
    c1 = ((offset >> 32) + (lo >> 32)) & _MASK32
    zero = torch.zeros_like(j)
    w = torch.stack(_philox_rounds(c0, c1, zero, zero, seed & _MASK32, seed >> 32, 10), dim=1)
    return w.reshape(-1)[:n]


def words_to_uniform(words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map 32-bit words to uniforms in the open interval (0, 1): ``u = ((w >> 8) + 0.5) * 2**-24``.

    ``u`` is exact in float64. float32 has one bit too few for the top half of the values, so
    they are rounded to nearest; the one value that would round to 1.0 (``w >> 8 = 2**24 - 1``)
    is clamped to the largest float32 below 1, keeping ``log(u)`` and ``log(1 - u)`` finite.

    Args:
        words: int64 tensor of 32-bit words.
        dtype: torch.float32 (default) or torch.float64.

    Example:
        >>> words_to_uniform(torch.tensor([0, 0xFFFFFFFF]), torch.float64).tolist() == [2**-25, 1 - 2**-25]
        True
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"words_to_uniform gives float32 or float64, got {dtype}")
    u = ((words >> 8).to(torch.float64) + 0.5) * (2.0**-24)
    if dtype == torch.float64:
        return u
    return u.to(torch.float32).clamp_(max=1.0 - 2.0**-24)


def draw_seed(generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh 64-bit seed from ``generator`` (torch's default CPU generator if None).

    Returns the seed as a 0-dim int64 tensor holding the seed's two's-complement bits, the form
    the kernels take (it never forces a host sync under torch.compile).

    Example:
        >>> _ = torch.manual_seed(0); a = draw_seed()
        >>> _ = torch.manual_seed(0); bool(a == draw_seed())
        True
    """
    device = generator.device if generator is not None else "cpu"
    hi, lo = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator, device=device)
    return ((hi << 32) | lo).cpu()


def draw_seed_int(generator: torch.Generator | None = None) -> int:
    """The seed :func:`draw_seed` would give, as a Python int (one draw, no tensor arithmetic).

    Eager code uses this; :func:`draw_seed` stays tensor-only so that torch.compile can trace it.

    Example:
        >>> _ = torch.manual_seed(0); a = draw_seed_int()
        >>> _ = torch.manual_seed(0); a == signed_to_seed(int(draw_seed()))
        True
    """
    device = generator.device if generator is not None else "cpu"
    hi, lo = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator, device=device).tolist()
    return (hi << 32) | lo


def seed_to_signed(seed: int) -> int:
    """The int64 holding the bits of an unsigned 64-bit seed (for storage in int64 buffers)."""
    return seed - _U64 if seed >= 1 << 63 else seed


def signed_to_seed(value: int) -> int:
    """Inverse of :func:`seed_to_signed`."""
    return value & (_U64 - 1)



def derive_seed(base_seed: int, *parts: str | int) -> int:
    """A 64-bit seed derived stably from ``base_seed`` and ``parts`` (names, ranks, indices).

    The derivation is BLAKE2b with an 8-byte digest over the canonical text
    ``"philox-v1|<base_seed>|<part>|<part>..."`` read as a little-endian unsigned integer. It is
    the same in every process and on every machine (unlike Python's salted ``hash``), so a layer
    named ``"encoder.0.dropout"`` gets the same stream in every run for the same base seed.

    Example:
        >>> derive_seed(0, "fc.dropout") == derive_seed(0, "fc.dropout") != derive_seed(1, "fc.dropout")
        True
    """
    base_seed = check_seed(base_seed, "base_seed")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise TypeError(f"derive_seed parts must be str or int, got {part!r}")
    text = "|".join([STREAM_VERSION, str(base_seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Position(tuple):
    """A stream position ``(seed, offset)``: on the host as Python ints in ``[0, 2**64)``, or on a
    device as two 0-dim int64 tensors holding the same bits (two's complement), which kernels
    read from memory without a sync.

    It is a pair (``seed, offset = position`` works) with the two conversions the code needs:
    :meth:`host` (ints; reads device tensors back, a sync) and :meth:`on` (tensors on a device;
    ints are copied there without blocking).

    Example:
        >>> p = Position(2**64 - 1, 5)
        >>> p.on_host, p.on("cpu").seed.item(), p.on("cpu").host() == p
        (True, -1, True)
    """

    __slots__ = ()

    def __new__(cls, seed: int | torch.Tensor, offset: int | torch.Tensor) -> Position:
        return tuple.__new__(cls, (seed, offset))

    @property
    def seed(self) -> int | torch.Tensor:
        """The key of the stream."""
        return self[0]

    @property
    def offset(self) -> int | torch.Tensor:
        """The first 4-word block of the draw."""
        return self[1]

    @property
    def on_host(self) -> bool:
        """Whether both halves are Python ints."""
        return type(self[0]) is int and type(self[1]) is int

    def host(self) -> Position:
        """This position as unsigned Python ints (a device tensor is read back: a sync)."""
        seed, offset = self
        if type(seed) is not int:
            seed = signed_to_seed(int(seed))
        if type(offset) is not int:
            offset = signed_to_seed(int(offset))
        return tuple.__new__(Position, (seed, offset))

    def on(self, device: torch.device | str | None) -> Position:
        """This position as 0-dim int64 tensors: ints become tensors on ``device`` (None: the
        CPU), filled on the device without waiting for it; tensors are kept as they are (wherever
        they live)."""
        seed, offset = self
        if type(seed) is int:
            seed = _tensor_on(seed, device)
        if type(offset) is int:
            offset = _tensor_on(offset, device)
        return tuple.__new__(Position, (seed, offset))

    def __repr__(self) -> str:
        return f"Position(seed={self[0]!r}, offset={self[1]!r})"


def _tensor_on(value: int, device: torch.device | str | None) -> torch.Tensor:
    # A fill with the value as the kernel's argument: a copy from host memory would wait for the
    # device's queue to drain (cudaMemcpyAsync from pageable memory synchronizes its stream).
    return torch.full((), seed_to_signed(value), dtype=torch.int64, device=device)


class StreamProtocol(Protocol):
    """What every stream is: ``take(words)`` reserves exactly ``words`` words and returns the
    :class:`Position` of the first one; the next ``take`` starts past them.

    :class:`Stream`, :class:`DrawnStream`, :class:`BufferStream` and :class:`TensorStream` are
    streams, and so are the recording and replaying streams of activation checkpointing
    (:mod:`dropkit.layers`) and :class:`TracedStream`. The function that draws is the one that
    calls ``take``; no caller predicts how many words it will use.
    """

    def take(self, words: int) -> Position: ...


class Stream:
    """A position on the philox-v1 stream that reserves exactly the words drawn from it.

    ``take(words)`` returns the ``(seed, offset)`` at which a draw of ``words`` words starts and
    moves the position past them: ``offset`` advances by ``ceil(words / 4)`` blocks (mod
    2**64), so the next draw never reuses a word. The function that draws is the one that
    calls ``take``; no caller predicts how many words it will use. ``words`` counts every word
    reserved so far.

    This form holds ``seed`` and ``offset`` as Python ints (CPU work: no tensor operation per
    call). :class:`TensorStream` holds them in device memory.

    Example:
        >>> s = Stream(7)
        >>> s.take(10), s.take(1), s.offset, s.words
        (Position(seed=7, offset=0), Position(seed=7, offset=3), 4, 11)
    """

    __slots__ = ("seed", "offset", "words")

    def __init__(self, seed: int | None, offset: int = 0) -> None:
        self.seed = seed
        self.offset = offset
        self.words = 0

    def take(self, words: int) -> Position:
        """Reserve ``words`` words; returns the position of the first one."""
        start = self.offset
        self.offset = (start + ((words + 3) >> 2)) & (_U64 - 1)
        self.words += words
        return tuple.__new__(Position, (self.seed, start))


class DrawnStream(Stream):
    """A stream whose seed is drawn from ``generator`` (torch's default one if None) at the
    first ``take``: a call that ends up drawing nothing leaves torch's generator untouched.

    Example:
        >>> _ = torch.manual_seed(0); a = DrawnStream(None).take(4)
        >>> _ = torch.manual_seed(0); a == (draw_seed_int(), 0)
        True
    """

    __slots__ = ("generator",)

    def __init__(self, generator: torch.Generator | None) -> None:
        super().__init__(None, 0)
        self.generator = generator

    def take(self, words: int) -> Position:
        """Reserve ``words`` words, drawing the seed first if this is the first draw."""
        if self.seed is None:
            self.seed = draw_seed_int(self.generator)
        return Stream.take(self, words)


class BufferStream:
    """The stream of a seeded module whose ``seed`` and ``offset`` buffers live on the CPU.

    It reads and advances the buffers in place through NumPy views of their memory (about a
    tenth of the cost of a tensor operation), so the ``state_dict`` always holds the position
    and an edit of a buffer is seen by the next draw. A reservation holds a lock, so threads
    calling one module at once never share an offset.

    Example:
        >>> seed, offset = torch.tensor(5), torch.tensor(0)
        >>> s = BufferStream(seed, offset)
        >>> s.take(9), int(offset)
        (Position(seed=5, offset=0), 3)
    """

    __slots__ = ("seed_buffer", "offset_buffer", "words", "_seed", "_offset")
    _lock = threading.Lock()

    def __init__(self, seed: torch.Tensor, offset: torch.Tensor) -> None:
        self.seed_buffer, self.offset_buffer, self.words = seed, offset, 0
        self._seed = seed.detach().numpy().view("uint64")
        self._offset = offset.detach().numpy().view("uint64")

    def take(self, words: int) -> Position:
        """Reserve ``words`` words from the buffers; returns the position as unsigned ints."""
        with BufferStream._lock:
            start = int(self._offset[()])
            self._offset[()] = (start + ((words + 3) >> 2)) & (_U64 - 1)
            self.words += words
        return tuple.__new__(Position, (int(self._seed[()]), start))


@torch.library.custom_op("dropkit::position_copy", mutates_args=())
def _position_copy(offset: torch.Tensor) -> torch.Tensor:
    """A copy of a stream's offset, taken before the offset is advanced.

    An op of its own so that torch.compile keeps the copy: a plain ``clone`` of the offset buffer
    may be recomputed in the backward graph from the buffer itself, which by then has been
    advanced, and a backward that draws its mask or noise again would draw other words.
    """
    return offset.clone()


@_position_copy.register_fake
def _(offset):
    return torch.empty_like(offset)


class TensorStream:
    """A stream whose position lives in 0-dim int64 tensors (two's-complement bits), e.g. on
    the GPU or under torch.compile.

    ``take`` returns ``(seed, offset)`` as tensors and advances ``offset`` in place with a
    device operation, so no value is ever read back to the host: kernels read the position
    from memory, and a step that uses the stream can be captured in a CUDA graph. With
    ``seed=None`` the seed is drawn from ``generator`` (as a tensor) at the first ``take``.

    Example:
        >>> s = TensorStream(torch.tensor(3), torch.tensor(0))
        >>> seed, offset = s.take(5)
        >>> int(seed), int(offset), int(s.offset)
        (3, 0, 2)
    """

    __slots__ = ("seed", "offset", "words", "generator", "lock")

    def __init__(
        self,
        seed: torch.Tensor | None,
        offset: torch.Tensor,
        generator: torch.Generator | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.seed, self.offset, self.generator, self.lock = seed, offset, generator, lock
        self.words = 0

    def take(self, words: int) -> Position:
        """Reserve ``words`` words; returns the seed and a copy of the starting offset."""
        if self.seed is None:
            self.seed = draw_seed(self.generator).to(self.offset.device)
        if self.lock is None:  # compiled code: the graph orders the reservations
            return self._reserve(words)
        with self.lock:
            return self._reserve(words)

    def _reserve(self, words: int) -> Position:
        # Compiled code (no lock) takes the copy as an op of its own (see _position_copy).
        start = self.offset.clone() if self.lock is not None else _position_copy(self.offset)
        self.offset.add_((words + 3) >> 2)
        self.words += words
        if self.lock is None and torch.compiler.is_compiling():
            # Compiled code only unpacks the pair, and torch 2.5's dynamo cannot build a tuple
            # subclass: a plain pair there.
            return (self.seed, start)  # type: ignore[return-value]
        return tuple.__new__(Position, (self.seed, start))


def refuse_tracing() -> NoReturn:
    """Raise the RuntimeError that explains why a random draw cannot be traced."""
    # torch.jit.trace (and the legacy ONNX exporter, which traces) would record this call's
    # random draw as a constant of the graph: every run of the traced model would reuse it.
    raise RuntimeError(
        "dropkit's random draws cannot be traced (torch.jit.trace, or torch.onnx.export with "
        "training=TrainingMode.TRAINING): the trace would hold one fixed mask. Trace or export the "
        "model in eval mode"
    )


class TracedStream:
    """The stream of a call under torch.jit.trace: a draw would become a constant of the trace,
    so the first ``take`` refuses (:func:`refuse_tracing`)."""

    __slots__ = ()

    def take(self, words: int) -> Position:
        """Refuse: see the class docstring."""
        refuse_tracing()


def check_generator(generator: object) -> torch.Generator | None:
    """Check that ``generator`` is None or a torch.Generator (TypeError naming it otherwise).

    Example:
        >>> check_generator(None) is None
        True
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r} of type "
                        f"{type(generator).__name__}")
    return generator


def check_position(value: object, name: str) -> int | torch.Tensor:
    """Check a ``seed`` or ``offset`` argument: an int in [0, 2**64), or a one-element integer
    tensor holding its two's-complement int64 bits (a seeded layer's buffer, say).

    Raises:
        TypeError: for a float, bool or complex tensor (never truncated) or another type.
        ValueError: for an int outside [0, 2**64) or a tensor of more than one element.

    Example:
        >>> check_position(torch.tensor([-1]), "seed")
        tensor(-1)
    """
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int or an integer tensor, got a {value.dtype} tensor "
                            f"({value!r}); a stream position is never rounded")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got shape {tuple(value.shape)}")
        return value.reshape(()).to(torch.int64)
    return check_seed(value, name)


def open_stream(
    seed: int | torch.Tensor | None,
    offset: int | torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device,
) -> StreamProtocol:
    """The stream a functional call draws from, built from its ``seed``, ``offset`` and
    ``generator`` arguments (checked here, once).

    ``seed=None`` draws a fresh seed from ``generator`` (torch's default generator if None) at
    the first draw. On the CPU the position travels as Python ints (:class:`Stream`); on other
    devices and under torch.compile as tensors on ``device`` (:class:`TensorStream`), so that no
    value is read back to the host.

    Example:
        >>> open_stream(5, 2, None, torch.device("cpu")).take(4)
        Position(seed=5, offset=2)
    """
    generator = check_generator(generator)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if _torch.tracing_state() is not None:
        return TracedStream()
    if seed is not None:
        seed = check_position(seed, "seed")
    offset = check_position(offset, "offset")
    if device.type in ("cpu", "meta") and not torch.compiler.is_compiling():  # meta: host positions
        if isinstance(offset, torch.Tensor):
            offset = signed_to_seed(int(offset))
        if seed is None:
            stream = DrawnStream(generator)
            stream.offset = offset
            return stream
        return Stream(signed_to_seed(int(seed)) if isinstance(seed, torch.Tensor) else seed, offset)
    seed_tensor, offset_tensor = Position(0 if seed is None else seed, offset).on(None)
    # The stream advances its offset in place: never the caller's own tensor.
    offset_tensor = offset_tensor.to(device, copy=True)
    return TensorStream(None if seed is None else seed_tensor.to(device), offset_tensor, generator)
