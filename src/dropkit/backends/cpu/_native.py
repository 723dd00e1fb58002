"""The native library: loading it, choosing its SIMD path, and what every call of it shares.

``_dropkit_cpu`` (the ``dk_*.c`` files beside this one, built by setup.py) is loaded with
ctypes when this module is imported; :func:`load_error` says why it could not be. The same file
is also a CPython module (py_entry.c) whose ``run``, ``bcast_apply`` and ``bcast_draw_apply``
take the arguments of ``dk_run``, ``dk_bcast_apply`` and ``dk_bcast_draw_apply`` as Python ints
and floats, without ctypes' per-argument conversion: :data:`fast` is that module (None where the
build has no entry points, and the ctypes functions serve instead). The SIMD
path is chosen at run time (AVX-512, AVX2, NEON or portable C); ``DROPKIT_CPU_ISA`` =
``scalar`` | ``avx2`` | ``avx512`` | ``neon`` (read at import) or :func:`set_isa` forces one.
Every call passes ``torch.get_num_threads()`` and runs with the GIL released (ctypes releases
it around foreign calls).

The other parts of the backend read ``lib`` and ``isa`` from this module at call time (so
that :func:`set_isa` is seen by the next call), raise :func:`unavailable` when ``lib`` is None,
and size what a call saves for backward with :func:`new_saved`.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.machinery
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import torch

__all__ = ["ISAS", "DTYPES", "load_error", "available_isas", "set_isa", "current_isa"]

ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
# torch dtype -> the C library's dtype code.
DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}
DTYPES = frozenset(DTYPE_CODES)
STORAGES = ("bits", "seed", "bool")
_ERRORS = {
    -1: "ISA not available",
    -2: "bad dtype",
    -3: "threshold above 2**32",
    -4: "unaligned index",
    -5: "bad sizes",
    -6: "out of memory",
}

_ptr, _u64, _int, _dbl = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_double
_COMMON_ARGS = [_int, _int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _u64, _u64, _u64, _dbl]


def _open() -> tuple[ctypes.CDLL | None, str | None]:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_dropkit_cpu{suffix}"
        if path.exists():
            break
    else:
        return None, f"the compiled library _dropkit_cpu was not found in {here} (was the C build skipped?)"
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"cannot load {path.name}: {exc}"
    library.dk_run.argtypes = [*_COMMON_ARGS, _u64, _int]
    library.dk_range.argtypes = [*_COMMON_ARGS, _u64, _u64]
    library.dk_isa_available.argtypes = [_int]
    library.dk_uniform.argtypes = [_u64, _u64, _u64, _int, _ptr, _int]
    library.dk_normal.argtypes = [_int, _u64, _u64, _u64, _int, _ptr, _int]
    library.dk_gaussian.argtypes = [_int, _int, _ptr, _ptr, _u64, _u64, _u64, _dbl, _int, _int]
    library.dk_bcast_apply.argtypes = [_int, _int, _int, _ptr, _ptr, _ptr, _u64, _int, _ptr, _ptr, _ptr,
                                       _ptr, _dbl, _dbl, _dbl, _dbl, _int]
    library.dk_bcast_draw_apply.argtypes = [_int, _int, _int, _ptr, _ptr, _ptr, _ptr, _u64, _u64, _u64,
                                            _u64, _int, _ptr, _ptr, _ptr, _ptr, _dbl, _dbl, _dbl, _dbl, _int]
    library.dk_dropblock_mask.argtypes = [_int, _u64, _u64, _u64, _u64, _int, _ptr, _ptr, _ptr, _ptr, _int]
    return library, None


def _resolve_isa(name: str | None) -> int:
    if name in (None, "", "auto"):
        return int(lib.dk_best_isa())
    if name not in ISAS:
        raise ValueError(f"DROPKIT_CPU_ISA must be one of auto, {', '.join(ISAS)}; got {name!r}")
    if not lib.dk_isa_available(ISAS[name]):
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
    if lib is None:
        return []
    return [name for name, code in ISAS.items() if lib.dk_isa_available(code)]


def _entry_points() -> ModuleType | None:
    """The CPython module of the same library (py_entry.c), or None (the ctypes functions then
    serve every call; a build from an older source tree has no entry points)."""
    try:
        module = importlib.import_module(f"{__package__}._dropkit_cpu")
    except ImportError:
        return None
    return module if all(hasattr(module, f) for f in ("run", "bcast_apply", "bcast_draw_apply")) else None


lib, _error = _open()
isa = 0
fast: ModuleType | None = None
if lib is not None:
    # Read once: a lookup in os.environ per call would cost more than a small kernel call.
    try:
        isa = _resolve_isa(os.environ.get("DROPKIT_CPU_ISA"))
    except ValueError as exc:
        lib, _error = None, str(exc)
    else:
        fast = None if os.environ.get("DROPKIT_CPU_CTYPES") == "1" else _entry_points()


def unavailable() -> NoReturn:
    """Raise the RuntimeError of a call made while the native library is not loaded."""
    raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")


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
    global isa
    if lib is None:
        unavailable()
    isa = _resolve_isa(name)


def current_isa() -> str:
    """Name of the SIMD path calls use now (``DROPKIT_CPU_ISA`` or the fastest available).

    Example:
        >>> load_error() is not None or current_isa() in ISAS
        True
    """
    return next(name for name, c in ISAS.items() if c == isa)


def check(code: int) -> None:
    """Raise the RuntimeError that a nonzero return ``code`` of the C library stands for."""
    if code:
        raise RuntimeError(f"dropkit native kernel failed: {_ERRORS.get(code, code)}")


def run(dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold, scale, n) -> None:
    """``dk_run`` on ``n`` elements: the mask from the stream, ``bits_in`` or ``bool_in`` (the
    first given), written to ``bits_out``/``bool_out`` and applied to ``x`` where given."""
    if lib is None:
        unavailable()
    call = fast.run if fast is not None else lib.dk_run
    check(call(isa, dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold, scale,
               n, torch.get_num_threads()))


# What "seed" storage saves: nothing. One shared empty tensor (it is never written).
NOTHING = torch.empty(0, dtype=torch.uint8)


def new_saved(n: int, storage: str) -> torch.Tensor:
    """The uninitialized buffer that ``storage`` keeps of a mask of ``n`` elements:
    ``(ceil(n / 8),)`` uint8 ("bits"), ``(n,)`` bool ("bool") or ``(0,)`` uint8 ("seed").

    Raises:
        ValueError: naming ``storage`` if it is none of those.

    Example:
        >>> new_saved(20, "bits").shape, new_saved(20, "bool").dtype, new_saved(20, "seed").numel()
        (torch.Size([3]), torch.bool, 0)
    """
    if storage == "bits":
        return torch.empty((n + 7) // 8, dtype=torch.uint8)
    if storage == "bool":
        return torch.empty(n, dtype=torch.bool)
    if storage == "seed":
        return NOTHING
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
