"""dropkit's operators: the only door to the backends, and the only module that knows about
torch.compile.

Every random draw of the family passes through here: dropout with its backward
(:func:`dropout`), keep-masks (:func:`keep_mask`), uniforms and normals (:func:`uniform`,
:func:`normal`), Gaussian dropout and noise with the normals drawn in the kernel
(:func:`gaussian`), and the fused dropout-add-norm (:func:`dropout_add_norm`). Each picks a backend
from the tensor's device and dtype: the native CPU kernel for CPU tensors, Triton for CUDA
tensors, and the reference backend for everything else, for an operation the preferred backend
does not implement, or when it cannot load (reported once, with a warning that points at the
caller's line).

**Routes.** Each op asks ``_dispatch.backend_of`` (or ``route`` for a draw without an input
tensor) which backend runs its kernel; the answer comes from the backends' records
(:mod:`dropkit.backends.contract`) and is cached in one table.

**Positions.** A stream position is a :class:`dropkit.rng.Position` ``(seed, offset)``: Python
ints on the host, or 0-dim int64 tensors holding their bits (a GPU layer's buffers, or anything
under torch.compile). A backend declares which form it reads (``position`` of its record) and
this module hands it that form, so a GPU kernel reads its position from memory and never syncs.

**One autograd path per op kind** (:mod:`._autograd`). Each op kind has one body that eager code
calls and that torch.compile sees as a custom op (``dropkit::dropout_fwd``, ...; opaque to the
compiler, with fake kernels for shapes), so the compiled graph neither bakes in a mask nor
recompiles per step; and every backward is the self-adjoint map of the forward's mask, written
once.
"""

from __future__ import annotations

from dropkit.backends._shared import opmath_dtype
from dropkit.ops._dispatch import (
    MASK_STORAGES,
    backend_for,
    backend_name,
    compiling,
    refuse_tracing,
    use_backend,
)
from dropkit.ops._draws import keep_mask, normal, uniform
from dropkit.ops._dropout import dropout, dropout_backward, dropout_forward
from dropkit.ops._fused import attention, dropout_add_norm, fuses_attention, fuses_dropout_add_norm
from dropkit.ops._masked import alpha, bcast_dropout, drop_block
from dropkit.ops._noise import gaussian

__all__ = [
    "MASK_STORAGES",
    "opmath_dtype",
    "compiling",
    "refuse_tracing",
    "backend_for",
    "backend_name",
    "use_backend",
    "dropout",
    "keep_mask",
    "bcast_dropout",
    "alpha",
    "drop_block",
    "uniform",
    "normal",
    "gaussian",
    "dropout_forward",
    "dropout_backward",
    "fuses_attention",
    "attention",
    "fuses_dropout_add_norm",
    "dropout_add_norm",
]
