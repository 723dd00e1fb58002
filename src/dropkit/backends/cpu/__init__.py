"""The native CPU backend: dropout fused into one pass over memory, in C, loaded with ctypes.

The C library (``dk_*.c`` beside this file, built by setup.py) computes the philox-v1 words,
the comparison with the threshold and the operation in one pass. It matches
:mod:`dropkit.backends.reference` bit for bit; what it provides to :mod:`dropkit.ops` is
declared in :mod:`dropkit.backends.contract`. Stream positions arrive as Python ints.

The SIMD path is chosen at run time (AVX-512, AVX2, NEON or portable C); ``DROPKIT_CPU_ISA`` =
``scalar`` | ``avx2`` | ``avx512`` | ``neon`` (read at import) or :func:`set_isa` forces one. Calls run
on ``torch.get_num_threads()`` threads, with the GIL released while the kernel runs (ctypes
releases it around foreign calls).

The parts:

* :mod:`._native`: loading the library, the SIMD path (``DROPKIT_CPU_ISA``, :func:`set_isa`),
  the one error of a missing library and the size of what a call saves;
* :mod:`._elementwise`: dropout and keep-masks, one stream word per element;
* :mod:`._layout`: the loop nest of the broadcast kernels and the layouts they take;
* :mod:`._masks`: masks shared along broadcast dims (Dropout2d, shared_dims, alpha dropout);
* :mod:`._dropblock`: DropBlock;
* :mod:`._noise`: uniforms, normals and Gaussian noise.
"""

from __future__ import annotations

import sys

from dropkit.backends.contract import HOST, NOT_PROVIDED, describe
from dropkit.backends.cpu._dropblock import dropblock_backward, dropblock_forward, dropblock_mask
from dropkit.backends.cpu._elementwise import (
    dropout_backward,
    dropout_forward,
    keep_mask,
    pack_mask,
    run_range,
)
from dropkit.backends.cpu._layout import MAX_DIMS, supports_layout
from dropkit.backends.cpu._masks import (
    alpha_backward,
    alpha_forward,
    bcast_dropout_backward,
    bcast_dropout_forward,
    bcast_dropout_redraw,
)
from dropkit.backends.cpu._native import (
    DTYPES,
    ISAS,
    available_isas,
    current_isa,
    load_error,
    set_isa,
)
from dropkit.backends.cpu._noise import gaussian_apply, normal, uniform

__all__ = [
    "BACKEND",
    "DTYPES",
    "MAX_DIMS",
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
    "bcast_dropout_redraw",
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

# Stream positions arrive as Python ints; the fused kernels are the Triton backend's alone.
BACKEND = describe(sys.modules[__name__], "cpu", HOST, dtypes=DTYPES, max_dims=MAX_DIMS, error=load_error(),
                   fused_attention=NOT_PROVIDED, fused_norm=NOT_PROVIDED)
