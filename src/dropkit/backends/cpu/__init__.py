"""The native CPU backend: dropout fused into one pass over memory, in C, loaded with ctypes.

The C library (``dk_*.c`` beside this file, built by setup.py) computes the philox-v1 words,
the comparison with the threshold and the scaling in one pass: forward reads ``x`` and writes
``y`` and the packed keep bits; backward reads ``grad`` and the bits (or regenerates them from
``seed`` and ``offset``) and writes ``grad_in``. It matches :mod:`dropkit.backends.reference`
bit for bit (see dropkit.backends for the contract).

The SIMD path is chosen at run time (AVX-512, AVX2 or portable C); ``DROPKIT_CPU_ISA`` =
``scalar`` | ``avx2`` | ``avx512`` (read at import) or :func:`set_isa` forces one. Calls run
on ``torch.get_num_threads()`` threads, with the GIL released while the kernel runs (ctypes
releases it around foreign calls).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path

import torch

__all__ = [
    "POSITION",
    "DTYPES",
    "ISAS",
    "load_error",
    "available_isas",
    "current_isa",
    "set_isa",
    "keep_mask",
    "pack_mask",
    "dropout_forward",
    "dropout_backward",
    "run_range",
]

# Stream positions arrive as Python ints; dropkit.ops sends other dtypes to the reference backend.
POSITION = "host"
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_DTYPES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}
DTYPES = frozenset(_DTYPES)
_ERRORS = {-1: "ISA not available", -2: "bad dtype", -3: "threshold above 2**32", -4: "unaligned index"}

_ptr, _u64, _int = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
_COMMON_ARGS = [_int, _int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _u64, _u64, _u64, ctypes.c_double]


def _open() -> tuple[ctypes.CDLL | None, str | None]:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_dropkit_cpu{suffix}"
        if path.exists():
            break
    else:
        return None, f"the compiled library _dropkit_cpu was not found in {here} (was the C build skipped?)"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"cannot load {path.name}: {exc}"
    lib.dk_run.argtypes = [*_COMMON_ARGS, _u64, _int]
    lib.dk_range.argtypes = [*_COMMON_ARGS, _u64, _u64]
    lib.dk_isa_available.argtypes = [_int]
    return lib, None


def _resolve_isa(name: str | None) -> int:
    if name in (None, "", "auto"):
        return int(_lib.dk_best_isa())
    if name not in ISAS:
        raise ValueError(f"DROPKIT_CPU_ISA must be one of auto, {', '.join(ISAS)}; got {name!r}")
    if not _lib.dk_isa_available(ISAS[name]):
        raise ValueError(f"the {name!r} path is not supported by this CPU or build; have {available_isas()}")
    return ISAS[name]


def load_error() -> str | None:
    """Why the native library cannot be used, or None when it loaded.

    Example:
        >>> load_error() is None or isinstance(load_error(), str)
        True
    """
    return _error


def available_isas() -> list[str]:
    """The SIMD paths this machine and build can run, fastest last (empty if not loaded).

    Example:
        >>> "scalar" in available_isas() or load_error() is not None
        True
    """
    if _lib is None:
        return []
    return [name for name, code in ISAS.items() if _lib.dk_isa_available(code)]


_lib, _error = _open()
_isa_code = 0
if _lib is not None:
    # Read once: a lookup in os.environ per call would cost more than a small kernel call.
    try:
        _isa_code = _resolve_isa(os.environ.get("DROPKIT_CPU_ISA"))
    except ValueError as exc:
        _lib, _error = None, str(exc)


def set_isa(name: str | None) -> None:
    """Force a SIMD path ("scalar", "avx2", "avx512", "neon") or restore the fastest (None or "auto").

    The ``DROPKIT_CPU_ISA`` environment variable does the same when the module is imported.

    Raises:
        ValueError: naming ``name`` if it is unknown or this CPU cannot run it.

    Example:
        >>> set_isa("scalar"); current_isa()
        'scalar'
        >>> set_isa(None)
    """
    global _isa_code
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    _isa_code = _resolve_isa(name)


def current_isa() -> str:
    """Name of the SIMD path calls use now (``DROPKIT_CPU_ISA`` or the fastest available).

    Example:
        >>> load_error() is not None or current_isa() in ISAS
        True
    """
    return next(name for name, c in ISAS.items() if c == _isa_code)


def _check(code: int) -> None:
    if code:
        raise RuntimeError(f"dropkit native kernel failed: {_ERRORS.get(code, code)}")


def _run(dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold, scale, n) -> None:
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    _check(
        _lib.dk_run(
            _isa_code, dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold, scale, n,
            torch.get_num_threads(),
        )
    )


def run_range(
    index0: int,
    x: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the kernel on elements ``[index0, index0 + n)`` of a call, on the calling thread.

    ``x`` holds those ``n`` elements; the result is ``(y, bits)`` for them, element ``i`` of ``x``
    using stream word ``index0 + i``. It lets tests check positions past 2**32 elements
    without allocating them. ``index0`` must be a multiple of 64.

    Shape:
        x: ``(n,)``; y: ``(n,)``; bits: ``(ceil(n / 8),)`` uint8.

    Example:
        >>> from dropkit.backends import reference
        >>> y, bits = run_range(2**33, torch.ones(64), seed=1, offset=0, threshold=2**31, scale=2.0)
        >>> bool(((y == 2.0) == reference.unpack_mask(bits, 64)).all())
        True
    """
    if index0 % 64 or index0 < 0:
        raise ValueError(f"index0 must be a non-negative multiple of 64, got {index0}")
    if x is None or x.dim() != 1 or x.dtype not in _DTYPES:
        raise TypeError(f"x must be a 1-D float32/float64/bfloat16/float16 tensor, got {x!r}")
    x = x.contiguous()
    n = x.numel()
    y = torch.empty_like(x)
    bits = torch.zeros((n + 7) // 8, dtype=torch.uint8)
    _check(
        _lib.dk_range(
            _isa_code, _DTYPES[x.dtype], x.data_ptr(), y.data_ptr(), None, None, bits.data_ptr(), None,
            seed, offset, threshold, scale, index0, n,
        )
    )
    return y, bits


def keep_mask(
    numel: int, seed: int, offset: int, threshold: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool keep-mask of shape (numel,): element ``i`` is kept iff stream word ``i`` >= ``threshold``.

    Shape:
        Output: ``(N,)`` bool with ``N = numel`` (True = kept).

    Example:
        >>> from dropkit.backends import reference
        >>> torch.equal(keep_mask(10, 3, 0, 2**31), reference.keep_mask(10, 3, 0, 2**31))
        True
    """
    out = torch.empty(numel, dtype=torch.bool)
    if numel:
        _run(0, None, None, None, None, None, out.data_ptr(), seed, offset, threshold, 0.0, numel)
    return out


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask (flattened) into bytes, element ``i`` in bit ``i % 8`` of byte ``i // 8``.

    Shape:
        mask: any shape, ``N`` elements; output: ``(ceil(N / 8),)`` uint8.

    Example:
        >>> pack_mask(torch.tensor([True, False, True])).tolist()
        [5]
    """
    flat = mask.reshape(-1).to(torch.bool).contiguous()
    n = flat.numel()
    out = torch.empty((n + 7) // 8, dtype=torch.uint8)
    if n:
        _run(0, None, None, None, flat.data_ptr(), out.data_ptr(), None, 0, 0, 0, 0.0, n)
    return out


# What "seed" storage saves: nothing. One shared empty tensor (it is never written).
_NOTHING = torch.empty(0, dtype=torch.uint8)


def _saved(x: torch.Tensor, storage: str) -> torch.Tensor:
    n = x.numel()
    if storage == "bits":
        return torch.empty((n + 7) // 8, dtype=torch.uint8)
    if storage == "bool":
        return torch.empty(n, dtype=torch.bool)
    if storage == "seed":
        return torch.empty(0, dtype=torch.uint8)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float, storage: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep, x * scale, +0.0)`` in one pass, and what ``storage`` keeps for backward.

    Element ``i`` of ``x`` (flattened) is kept iff philox-v1 word ``i`` of ``(seed, offset)`` is
    ``>= threshold``; the product is rounded to float32 (float64) once, then to ``x``'s dtype.

    Shape:
        x: ``(*)`` with ``N`` elements; y: same; saved: ``(ceil(N / 8),)`` uint8 ("bits"),
        ``(N,)`` bool ("bool") or ``(0,)`` uint8 ("seed").

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.ones(8)
        >>> y, bits = dropout_forward(x, 0, 0, 2**31, 2.0, "bits")
        >>> torch.equal(y, reference.dropout_forward(x, 0, 0, 2**31, 2.0, "bits")[0])
        True
    """
    # The body of _run and _saved written out: this is the per-call path of every CPU dropout.
    y = torch.empty_like(x)
    n = x.numel()
    bits = bools = None
    if storage == "seed":
        saved = _NOTHING
    elif storage == "bits":
        saved = torch.empty((n + 7) // 8, dtype=torch.uint8)
        bits = saved.data_ptr()
    else:
        saved = _saved(x, storage)
        bools = saved.data_ptr()
    if n:
        if _lib is None:
            raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
        code = _lib.dk_run(_isa_code, _DTYPES[x.dtype], x.data_ptr(), y.data_ptr(), None, None, bits, bools,
                           seed, offset, threshold, scale, n, torch.get_num_threads())
        if code:
            _check(code)
    return y, saved


def dropout_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep, grad * scale, +0.0)``, the mask read from ``saved`` or regenerated.

    Shape:
        grad: ``(*)`` with ``N`` elements; output: same; saved as :func:`dropout_forward` gives it.

    Example:
        >>> g = torch.ones(8)
        >>> _, bits = dropout_forward(g, 0, 0, 2**31, 2.0, "bits")
        >>> torch.equal(dropout_backward(g, bits, 0, 0, 2**31, 2.0, "bits"),
        ...             dropout_backward(g, bits, 0, 0, 2**31, 2.0, "seed"))
        True
    """
    if storage not in ("bits", "bool", "seed"):
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    out = torch.empty_like(grad)
    n = grad.numel()
    if n:
        if _lib is None:
            raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
        bits = saved.data_ptr() if storage == "bits" else None
        bools = saved.data_ptr() if storage == "bool" else None
        code = _lib.dk_run(_isa_code, _DTYPES[grad.dtype], grad.data_ptr(), out.data_ptr(), bits, bools, None,
                           None, seed, offset, threshold, scale, n, torch.get_num_threads())
        if code:
            _check(code)
    return out
