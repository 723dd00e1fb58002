"""The native CPU backend: dropout fused into one pass over memory, in C, loaded with ctypes.

The C library (``dk_*.c`` beside this file, built by setup.py) computes the philox-v1 words,
the comparison with the threshold and the scaling in one pass: forward reads ``x`` and writes
``y`` and the packed keep bits; backward reads ``grad`` and the bits (or regenerates them from
``seed`` and ``offset``) and writes ``grad_in``. It matches :mod:`dropkit.backends.reference`
bit for bit (see dropkit.backends for the contract).

The SIMD path is chosen at run time (AVX-512, AVX2, NEON or portable C); ``DROPKIT_CPU_ISA`` =
``scalar`` | ``avx2`` | ``avx512`` | ``neon`` (read at import) or :func:`set_isa` forces one. Calls run
on ``torch.get_num_threads()`` threads, with the GIL released while the kernel runs (ctypes
releases it around foreign calls).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from dropkit.backends._shared import (
    check_mask_shape,
    dropblock_applied_scale,
    dropblock_mask_shape,
    dropblock_scale,
)

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
    "bcast_dropout_forward",
    "bcast_dropout_backward",
    "alpha_forward",
    "alpha_backward",
    "dropblock_mask",
    "dropblock_forward",
    "dropblock_backward",
    "supports_layout",
    "uniform",
    "normal",
    "gaussian_apply",
]

# Stream positions arrive as Python ints; dropkit.ops sends other dtypes to the reference backend.
POSITION = "host"
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_DTYPES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}
DTYPES = frozenset(_DTYPES)
_ERRORS = {
    -1: "ISA not available",
    -2: "bad dtype",
    -3: "threshold above 2**32",
    -4: "unaligned index",
    -5: "bad sizes",
    -6: "out of memory",
}
_OP_SCALE, _OP_ALPHA = 0, 1
_MAX_DIMS = 8

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
    lib.dk_uniform.argtypes = [_u64, _u64, _u64, _int, _ptr, _int]
    lib.dk_normal.argtypes = [_int, _u64, _u64, _u64, _int, _ptr, _int]
    lib.dk_gaussian.argtypes = [_int, _int, _ptr, _ptr, _u64, _u64, _u64, ctypes.c_double, _int, _int]
    _dbl = ctypes.c_double
    lib.dk_bcast_apply.argtypes = [_int, _int, _int, _ptr, _ptr, _ptr, _u64, _int, _ptr, _ptr, _ptr, _ptr,
                                   _dbl, _dbl, _dbl, _dbl, _int]
    lib.dk_bcast_draw_apply.argtypes = [_int, _int, _int, _ptr, _ptr, _ptr, _ptr, _u64, _u64, _u64, _u64,
                                        _int, _ptr, _ptr, _ptr, _ptr, _dbl, _dbl, _dbl, _dbl, _int]
    lib.dk_dropblock_mask.argtypes = [_int, _u64, _u64, _u64, _u64, _int, _ptr, _ptr, _ptr, _ptr, _int]
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


# ---- masks with broadcast dimensions ----


def _loop_nest(
    shape: Sequence[int], x_strides: Sequence[int], y_strides: Sequence[int], mask_shape: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The (size, x stride, y stride, mask stride) dims the C kernel iterates, outermost first.

    Dims of size 1 are dropped, the rest ordered by the output's strides (memory order, so
    channels_last runs over memory once), and neighbours merged where all three strides allow;
    the mask strides are the row-major strides of ``mask_shape``, 0 on its broadcast dims.
    """
    m_strides, acc = [0] * len(mask_shape), 1
    for d in reversed(range(len(mask_shape))):
        m_strides[d] = acc if mask_shape[d] != 1 else 0
        acc *= mask_shape[d]
    dims = [(shape[d], x_strides[d], y_strides[d], m_strides[d]) for d in range(len(shape)) if shape[d] != 1]
    dims.sort(key=lambda t: -abs(t[2]))  # stable: equal strides keep their logical order
    merged: list[tuple[int, int, int, int]] = []
    for size, xs, ys, ms in dims:
        if merged:
            psize, pxs, pys, pms = merged[-1]
            if pxs == xs * size and pys == ys * size and pms == ms * size:
                merged[-1] = (psize * size, xs, ys, ms)
                continue
        merged.append((size, xs, ys, ms))
    if len(merged) > _MAX_DIMS:  # supports_layout() said no: dropkit.ops used the reference backend
        raise ValueError(f"more than {_MAX_DIMS} non-mergeable dims")
    return merged or [(1, 1, 1, 0)]


@functools.lru_cache(maxsize=1024)
def _plan(
    shape: tuple[int, ...], x_strides: tuple[int, ...], y_strides: tuple[int, ...],
    mask_shape: tuple[int, ...],
) -> tuple:
    """:func:`_loop_nest` as the C kernel's arguments ``(nd, sizes, x strides, y strides, mask
    strides)``, built once per layout: a model calls its layers with the same shapes every step."""
    nest = _loop_nest(shape, x_strides, y_strides, mask_shape)
    array = ctypes.c_int64 * len(nest)
    return (len(nest), *(array(*(t[k] for t in nest)) for k in range(4)))


def _bcast_apply(
    op: int, x: torch.Tensor, y: torch.Tensor, bits: torch.Tensor, mask_shape: tuple[int, ...],
    scale: float, a: float = 0.0, b: float = 0.0, c: float = 0.0,
) -> None:
    nest = _plan(x.shape, x.stride(), y.stride(), mask_shape)
    code = _lib.dk_bcast_apply(
        _isa_code, op, _DTYPES[x.dtype], x.data_ptr(), y.data_ptr(), bits.data_ptr(), math.prod(mask_shape),
        *nest, scale, a, b, c, torch.get_num_threads(),
    )
    if code:
        _check(code)


def supports_layout(x: torch.Tensor, mask_shape: tuple[int, ...]) -> bool:
    """Whether the broadcast kernels take ``x`` as it is (at most 8 dims that are not 1).

    :mod:`dropkit.ops` sends any other tensor to the reference backend.

    Example:
        >>> supports_layout(torch.ones(2, 3, 4), (2, 1, 1))
        True
    """
    return _layout_supported(x.shape, x.dtype)


def _layout_supported(shape: Sequence[int], dtype: torch.dtype) -> bool:
    return _lib is not None and dtype in _DTYPES and (
        len(shape) <= _MAX_DIMS or sum(1 for s in shape if s != 1) <= _MAX_DIMS
    )


def _checked_layout(x: torch.Tensor, mask_shape: Sequence[int]) -> tuple[tuple[int, ...], bool]:
    """``(mask_shape as a tuple, whether it is x's whole shape on a contiguous x)``, after the checks
    of :func:`check_mask_shape` and :func:`_require_layout`; remembered per layout."""
    try:
        return _layout(x.shape, x.dtype, tuple(mask_shape), x.is_contiguous())
    except TypeError:  # unhashable entries: checked (and refused) without the cache
        return _layout.__wrapped__(x.shape, x.dtype, tuple(mask_shape), x.is_contiguous())


@functools.lru_cache(maxsize=1024)
def _layout(shape: torch.Size, dtype: torch.dtype, mask_shape: tuple, contiguous: bool) -> tuple:
    ms = check_mask_shape(shape, mask_shape)
    if not _layout_supported(shape, dtype):
        raise ValueError(_layout_refused(shape, dtype))
    return ms, contiguous and ms == tuple(shape)


def _layout_refused(shape: Sequence[int], dtype: torch.dtype) -> str:
    return (f"the native broadcast kernels take at most {_MAX_DIMS} dims of size > 1 and "
            f"dtypes {sorted(map(str, _DTYPES))}; got {tuple(shape)} {dtype}")


def _require_layout(x: torch.Tensor, mask_shape: tuple[int, ...]) -> None:
    if not supports_layout(x, mask_shape):
        raise ValueError(_layout_refused(x.shape, x.dtype))


def _mask_bits(
    n: int, seed: int, offset: int, threshold: int, bools: torch.Tensor | None = None
) -> torch.Tensor:
    """The packed keep-mask of ``n`` stream words (and, if given, the same mask as bools)."""
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8)
    if n:
        out_b = bools.data_ptr() if bools is not None else None
        _run(0, None, None, None, None, bits.data_ptr(), out_b, seed, offset, threshold, 0.0, n)
    return bits


def _bits_of_saved(
    saved: torch.Tensor, n: int, seed: int, offset: int, threshold: int, storage: str
) -> torch.Tensor:
    if storage == "bits":
        return saved.reshape(-1).contiguous()
    if storage == "bool":
        return pack_mask(saved)
    if storage == "seed":
        return _mask_bits(n, seed, offset, threshold)
    raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")


def _draw_apply(
    op: int, x: torch.Tensor, mask_shape: tuple[int, ...], seed: int, offset: int, threshold: int,
    bits: torch.Tensor | None, bools: torch.Tensor | None, scale: float, a: float = 0.0, b: float = 0.0,
    c: float = 0.0,
) -> torch.Tensor:
    """The output of op with the mask drawn and applied in one C call (the mask written to bits
    and bools where given, else kept nowhere); an empty x draws nothing."""
    y = torch.empty_like(x)
    if x.numel():
        nest = _plan(x.shape, x.stride(), y.stride(), mask_shape)
        code = _lib.dk_bcast_draw_apply(
            _isa_code, op, _DTYPES[x.dtype], x.data_ptr(), y.data_ptr(),
            None if bits is None else bits.data_ptr(), None if bools is None else bools.data_ptr(),
            seed, offset, threshold, math.prod(mask_shape), *nest, scale, a, b, c, torch.get_num_threads(),
        )
        if code:
            _check(code)
    return y


def _forward_masked(
    op: int, x: torch.Tensor, mask_shape: tuple[int, ...], seed: int, offset: int, threshold: int,
    storage: str, scale: float, a: float = 0.0, b: float = 0.0, c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    if storage not in ("bits", "bool", "seed"):
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    n = math.prod(mask_shape)
    bools = torch.empty(n, dtype=torch.bool) if storage == "bool" else None
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8)
    y = _draw_apply(op, x, mask_shape, seed, offset, threshold, bits, bools, scale, a, b, c)
    if not x.numel() and n:  # an empty tensor still draws (and saves) its mask
        bits = _mask_bits(n, seed, offset, threshold, bools)
    saved = bits if storage == "bits" else (bools if storage == "bool" else torch.empty(0, dtype=torch.uint8))
    return y, saved


def bcast_dropout_forward(
    x: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = where(keep[broadcast], x * scale, +0.0)`` in one pass over ``x``, mask drawn over ``mask_shape``.

    ``mask_shape`` has ``x``'s rank, each dim equal to ``x``'s or 1; mask element ``j``
    (row-major over ``mask_shape``) uses stream word ``j``, as :func:`keep_mask` of
    ``prod(mask_shape)`` words. The product is rounded as :func:`dropout_forward` rounds it.
    Any strides are read in place; ``y`` keeps ``x``'s memory format (``empty_like``).

    Shape:
        x: ``(*)``; y: same; saved: the reduced mask of ``M = prod(mask_shape)`` elements,
        ``(ceil(M / 8),)`` uint8 ("bits"), ``(M,)`` bool ("bool") or ``(0,)`` uint8 ("seed").

    Example:
        >>> x = torch.ones(4, 3, 5)
        >>> y, bits = bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "bits")
        >>> from dropkit.backends import reference
        >>> torch.equal(y, reference.bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "bits")[0])
        True
    """
    ms, whole = _checked_layout(x, mask_shape)
    if whole:
        return dropout_forward(x, seed, offset, threshold, scale, storage)
    return _forward_masked(_OP_SCALE, x, ms, seed, offset, threshold, storage, scale)


def bcast_dropout_redraw(
    x: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
) -> torch.Tensor:
    """``where(keep[broadcast], x * scale, +0.0)`` with the mask drawn in the same call and kept
    nowhere: the forward of :func:`bcast_dropout_forward` with ``storage="seed"``, and, called on
    the gradient with the same arguments, its backward (the map is linear and its own adjoint).

    Shape:
        x: ``(*)``; output: same (``x``'s memory format).

    Example:
        >>> x = torch.ones(4, 3, 5)
        >>> y = bcast_dropout_redraw(x, (4, 1, 1), 0, 0, 2**31, 2.0)
        >>> torch.equal(y, bcast_dropout_forward(x, (4, 1, 1), 0, 0, 2**31, 2.0, "seed")[0])
        True
    """
    ms, _ = _checked_layout(x, mask_shape)
    return _draw_apply(_OP_SCALE, x, ms, seed, offset, threshold, None, None, scale)


def bcast_dropout_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """``grad_in = where(keep[broadcast], grad * scale, +0.0)``, the mask from ``saved`` or regenerated.

    Shape:
        grad: ``(*)``; output: same (``grad``'s memory format); saved as
        :func:`bcast_dropout_forward` gives it.

    Example:
        >>> g = torch.ones(4, 3, 5)
        >>> _, bits = bcast_dropout_forward(g, (1, 3, 5), 0, 0, 2**31, 2.0, "bits")
        >>> torch.equal(bcast_dropout_backward(g, bits, (1, 3, 5), 0, 0, 2**31, 2.0, "bits"),
        ...             bcast_dropout_backward(g, bits, (1, 3, 5), 0, 0, 2**31, 2.0, "seed"))
        True
    """
    ms, whole = _checked_layout(grad, mask_shape)
    if whole:
        return dropout_backward(grad, saved, seed, offset, threshold, scale, storage)
    bits = _bits_of_saved(saved, math.prod(ms), seed, offset, threshold, storage)
    out = torch.empty_like(grad)
    if grad.numel():
        _bcast_apply(_OP_SCALE, grad, out, bits, ms, scale)
    return out


def alpha_forward(
    x: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    a: float,
    b: float,
    fill: float,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha dropout in one pass: ``y = where(keep[broadcast], x * a + b, fill)``.

    ``a``, ``b`` and ``fill`` (``a * alpha' + b``) are rounded to float32 (float64 for float64
    tensors); ``x * a`` and ``+ b`` are each rounded in that precision (no fused multiply-add)
    and the result once to ``x``'s dtype. The mask is that of :func:`bcast_dropout_forward`
    (``mask_shape == x.shape`` for AlphaDropout, ``(N, C, 1, ...)`` for FeatureAlphaDropout).

    Shape:
        x: ``(*)``; y: same; saved: as :func:`bcast_dropout_forward`.

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.ones(2, 3, 4)
        >>> y, _ = alpha_forward(x, (2, 3, 1), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")
        >>> torch.equal(y, reference.alpha_forward(x, (2, 3, 1), 1, 0, 2**31, 2.0, 0.5, -1.0, "seed")[0])
        True
    """
    ms, _ = _checked_layout(x, mask_shape)
    return _forward_masked(_OP_ALPHA, x, ms, seed, offset, threshold, storage, 0.0, a, b, fill)


def alpha_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    mask_shape: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    a: float,
    storage: str,
) -> torch.Tensor:
    """Alpha dropout's gradient ``where(keep[broadcast], grad * a, +0.0)`` (rounded as dropout's).

    Example:
        >>> from dropkit.backends import reference
        >>> g = torch.ones(2, 3, 4)
        >>> torch.equal(alpha_backward(g, torch.empty(0), (2, 3, 1), 1, 0, 2**31, 2.0, "seed"),
        ...             reference.alpha_backward(g, torch.empty(0), (2, 3, 1), 1, 0, 2**31, 2.0, "seed"))
        True
    """
    return bcast_dropout_backward(grad, saved, mask_shape, seed, offset, threshold, a, storage)


# ---- DropBlock ----


def dropblock_mask(
    shape: Sequence[int],
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """DropBlock's keep-mask over ``(N, C or 1, *spatial)`` and its kept count, in one threaded pass.

    ``block_size`` is clipped to the map already; seed word ``k`` is element ``k`` of the seed
    grid ``(N, C or 1, f - b + 1, ...)``, a seed iff the word is below ``threshold``; position
    ``y`` is dropped iff a seed lies at ``y - b + 1 .. y`` along every spatial axis.

    Shape:
        shape: ``(N, C, H, W)`` or ``(N, C, D, H, W)``; output: bool ``(N, C or 1, *spatial)``.

    Example:
        >>> from dropkit.backends import reference
        >>> keep, kept = dropblock_mask((2, 3, 8, 8), (3, 3), 0, 0, 2**28)
        >>> ref_keep, ref_kept = reference.dropblock_mask((2, 3, 8, 8), (3, 3), 0, 0, 2**28)
        >>> torch.equal(keep, ref_keep) and kept == ref_kept
        True
    """
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    keep_bits, kept = _dropblock_bits(shape, block_size, seed, offset, threshold, shared_channels)
    ms = (shape[0], 1 if shared_channels else shape[1], *shape[2:])
    return _unpack(keep_bits, math.prod(ms)).view(ms), kept


def _unpack(bits: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.bool)
    if n:
        _run(0, None, None, bits.data_ptr(), None, None, out.data_ptr(), 0, 0, 0, 0.0, n)
    return out


def _dropblock_bits(
    shape: Sequence[int],
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool,
) -> tuple[torch.Tensor, int]:
    """The packed block mask over ``(N, C or 1, *spatial)`` and its kept count."""
    shape = tuple(int(s) for s in shape)
    blocks = tuple(int(b) for b in block_size)
    if len(shape) - 2 != len(blocks) or len(blocks) not in (2, 3):
        raise ValueError(f"shape {shape} and block_size {blocks}: need (N, C, *spatial), 2 or 3 spatial dims")
    ms = (shape[0], 1 if shared_channels else shape[1], *shape[2:])
    n = math.prod(ms)
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8)  # the kernel writes every byte
    if n == 0:
        return bits, 0
    dims = ctypes.c_int64 * len(blocks)
    kept = ctypes.c_int64(0)
    _check(
        _lib.dk_dropblock_mask(
            _isa_code, seed, offset, threshold, ms[0] * ms[1], len(blocks), dims(*shape[2:]), dims(*blocks),
            bits.data_ptr(), ctypes.addressof(kept), torch.get_num_threads(),
        )
    )
    return bits, int(kept.value)


def dropblock_forward(
    x: torch.Tensor,
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool,
    storage: str,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """DropBlock on a batched ``x`` (N, C, *spatial) in one pass: ``(y, saved, scale)``.

    The block mask comes from :func:`dropblock_mask`, ``scale`` =
    :func:`dropkit.backends.reference.dropblock_scale` (count of mask elements over kept ones, in
    float32; 0 when nothing is kept) from the mask's count, and
    ``y = where(keep[broadcast], x * scale, +0.0)`` with ``scale`` rounded to ``x``'s dtype and
    the product rounded once. ``threshold`` is ``keep_threshold(gamma)``.

    Shape:
        x: ``(N, C, *spatial)``; y: same; saved: the block mask ``(N, C or 1, *spatial)`` as
        bits, bools or nothing ("seed": rebuilt in backward).

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.ones(2, 3, 8, 8)
        >>> y, bits, scale = dropblock_forward(x, (3, 3), 0, 0, 2**28, False, "bits")
        >>> torch.equal(y, reference.dropblock_forward(x, (3, 3), 0, 0, 2**28, False, "bits")[0])
        True
    """
    if storage not in ("bits", "bool", "seed"):
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    ms = dropblock_mask_shape(x.shape, shared_channels)
    _require_layout(x, ms)
    bits, kept = _dropblock_bits(x.shape, block_size, seed, offset, threshold, shared_channels)
    scale = dropblock_scale(math.prod(ms), kept)
    y = torch.empty_like(x)
    if x.numel():
        _bcast_apply(_OP_SCALE, x, y, bits, ms, dropblock_applied_scale(scale, x.dtype))
    if storage == "bits":
        saved = bits
    else:
        saved = _unpack(bits, math.prod(ms)) if storage == "bool" else torch.empty(0, dtype=torch.uint8)
    return y, saved, scale


def dropblock_backward(
    grad: torch.Tensor,
    saved: torch.Tensor,
    block_size: Sequence[int],
    seed: int,
    offset: int,
    threshold: int,
    shared_channels: bool,
    scale: float,
    storage: str,
) -> torch.Tensor:
    """DropBlock's gradient ``where(keep[broadcast], grad * scale, +0.0)``; "seed" rebuilds the mask.

    ``scale`` is the float :func:`dropblock_forward` returned.

    Example:
        >>> g = torch.ones(2, 3, 8, 8)
        >>> _, bits, s = dropblock_forward(g, (3, 3), 0, 0, 2**28, False, "bits")
        >>> torch.equal(dropblock_backward(g, bits, (3, 3), 0, 0, 2**28, False, s, "bits"),
        ...             dropblock_backward(g, bits, (3, 3), 0, 0, 2**28, False, s, "seed"))
        True
    """
    ms = dropblock_mask_shape(grad.shape, shared_channels)
    _require_layout(grad, ms)
    if storage == "seed":
        bits, _ = _dropblock_bits(grad.shape, block_size, seed, offset, threshold, shared_channels)
    else:
        bits = _bits_of_saved(saved, math.prod(ms), seed, offset, threshold, storage)
    out = torch.empty_like(grad)
    if grad.numel():
        _bcast_apply(_OP_SCALE, grad, out, bits, ms, dropblock_applied_scale(scale, grad.dtype))
    return out


# ---- Uniforms and normals ----


def uniform(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` uniforms in (0, 1) from ``numel`` stream words, ``((w >> 8) + 0.5) * 2**-24``.

    float64 is exact; float32 is rounded to nearest with the one value that would round to 1
    clamped below it, as :func:`dropkit.rng.words_to_uniform` gives them.

    Example:
        >>> from dropkit.backends import reference
        >>> u = uniform(9, 3, 2**32 - 1, torch.float32)
        >>> torch.equal(u, reference.uniform(9, 3, 2**32 - 1, torch.float32))
        True
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"uniforms are float32 or float64, got {dtype}")
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    out = torch.empty(numel, dtype=dtype)
    if numel:
        _lib.dk_uniform(seed, offset, numel, dtype == torch.float64, out.data_ptr(), torch.get_num_threads())
    return out


def normal(
    numel: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``numel`` standard normals of the stream, computed in C on the chosen SIMD path.

    The transform is :func:`dropkit.backends._shared.box_muller` (fixed float64 polynomials,
    no fused multiply-add), so the result equals the reference backend's bit for bit; float64
    and float32 are written directly, other dtypes rounded once from float64.

    Shape:
        Output: ``(numel,)``.

    Example:
        >>> from dropkit.backends import reference
        >>> torch.equal(normal(7, 3, 5, torch.float32), reference.normal(7, 3, 5, torch.float32))
        True
    """
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    direct = dtype in (torch.float32, torch.float64)
    out = torch.empty(numel, dtype=dtype if direct else torch.float64)
    if numel:
        _check(_lib.dk_normal(_isa_code, seed, offset, numel, out.dtype == torch.float64, out.data_ptr(),
                              torch.get_num_threads()))
    return out if direct else out.to(dtype)


def gaussian_apply(x: torch.Tensor, seed: int, offset: int, c: float, additive: bool) -> torch.Tensor:
    """Gaussian noise applied in one pass: ``y = x + c * z`` (``additive``) or ``y = x * (1 + c * z)``.

    Normal ``i`` of the stream meets element ``i`` of ``x`` (row-major); the normals are computed
    tile by tile beside the data and never stored. Rounded as
    :func:`dropkit.backends.reference.gaussian_apply` rounds (compute dtype float64 for float64,
    float32 otherwise; no fused multiply-add).

    Shape:
        x: ``(*)``; output: same shape (contiguous).

    Example:
        >>> from dropkit.backends import reference
        >>> x = torch.randn(100)
        >>> torch.equal(gaussian_apply(x, 1, 0, 0.5, False), reference.gaussian_apply(x, 1, 0, 0.5, False))
        True
    """
    if _lib is None:
        raise RuntimeError(f"dropkit's native CPU kernel is unavailable: {_error}")
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _check(_lib.dk_gaussian(_isa_code, _DTYPES[x.dtype], x.data_ptr(), y.data_ptr(), seed, offset, n,
                                float(c), bool(additive), torch.get_num_threads()))
    return y
