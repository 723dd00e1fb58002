"""Element-wise dropout in one pass over memory: element ``i`` of the flattened tensor meets
stream word ``i``. Forward reads ``x`` and writes ``y`` and the packed keep bits; backward reads
``grad`` and the bits (or regenerates them from ``seed`` and ``offset``) and writes ``grad_in``.
"""

from __future__ import annotations

import torch

from dropkit.backends.cpu import _native
from dropkit.backends.cpu._native import DTYPE_CODES, STORAGES, check, new_saved, run, unavailable

__all__ = ["run_range", "keep_mask", "pack_mask", "unpack", "dropout_forward", "dropout_backward"]


def run_range(
    index0: int, x: torch.Tensor | None, seed: int, offset: int, threshold: int, scale: float = 1.0,
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
    if x is None or x.dim() != 1 or x.dtype not in DTYPE_CODES:
        raise TypeError(f"x must be a 1-D float32/float64/bfloat16/float16 tensor, got {x!r}")
    if _native.lib is None:
        unavailable()
    x = x.contiguous()
    n = x.numel()
    y = torch.empty_like(x)
    bits = torch.zeros((n + 7) // 8, dtype=torch.uint8)
    check(
        _native.lib.dk_range(
            _native.isa, DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(), None, None, bits.data_ptr(), None,
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
        run(0, None, None, None, None, None, out.data_ptr(), seed, offset, threshold, 0.0, numel)
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
    out = new_saved(n, "bits")
    if n:
        run(0, None, None, None, flat.data_ptr(), out.data_ptr(), None, 0, 0, 0, 0.0, n)
    return out


def unpack(bits: torch.Tensor, n: int) -> torch.Tensor:
    """The bool mask of ``n`` elements that :func:`pack_mask` packed into ``bits``.

    Example:
        >>> unpack(pack_mask(torch.tensor([True, False, True])), 3).tolist()
        [True, False, True]
    """
    out = torch.empty(n, dtype=torch.bool)
    if n:
        run(0, None, None, bits.data_ptr(), None, None, out.data_ptr(), 0, 0, 0, 0.0, n)
    return out


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
    # The bodies of run and new_saved ("bits", "seed") written out: the per-call path of every
    # CPU dropout.
    y = torch.empty_like(x)
    n = x.numel()
    bits = bools = None
    if storage == "seed":
        saved = _native.NOTHING
    elif storage == "bits":
        saved = torch.empty((n + 7) // 8, dtype=torch.uint8)
        bits = saved.data_ptr()
    else:
        saved = new_saved(n, storage)
        bools = saved.data_ptr()
    if n:
        lib = _native.lib
        if lib is None:
            unavailable()
        call = _native.fast.run if _native.fast is not None else lib.dk_run
        code = call(_native.isa, DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(), None, None, bits,
                    bools, seed, offset, threshold, scale, n, torch.get_num_threads())
        if code:
            check(code)
    return y, saved


def dropout_backward(
    grad: torch.Tensor, saved: torch.Tensor, seed: int, offset: int, threshold: int, scale: float,
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
    if storage not in STORAGES:
        raise ValueError(f"storage must be 'bits', 'seed' or 'bool', got {storage!r}")
    out = torch.empty_like(grad)
    n = grad.numel()
    if n:
        lib = _native.lib
        if lib is None:
            unavailable()
        bits = saved.data_ptr() if storage == "bits" else None
        bools = saved.data_ptr() if storage == "bool" else None
        call = _native.fast.run if _native.fast is not None else lib.dk_run
        code = call(_native.isa, DTYPE_CODES[grad.dtype], grad.data_ptr(), out.data_ptr(), bits, bools,
                    None, None, seed, offset, threshold, scale, n, torch.get_num_threads())
        if code:
            check(code)
    return out
