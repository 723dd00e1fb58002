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

**Positions.** A stream position is ``(seed, offset)``: Python ints on the host, or 0-dim int64
tensors holding their bits (a GPU layer's buffers, or anything under torch.compile). Backends
say which form they read (``POSITION = "host"`` or ``"device"``) and this module hands them that
form: tensors become ints for host backends (a free read for CPU tensors), ints become device
tensors for device backends, so a GPU kernel reads its position from memory and never syncs.

**One autograd definition.** :class:`_Dropout` is the only autograd code. In eager mode its
forward and backward call the backend directly; under torch.compile they call the custom ops
``dropkit::dropout_fwd`` / ``dropkit::dropout_bwd`` (opaque to the compiler, with fake kernels
for shapes), so the compiled graph neither bakes in a mask nor recompiles per step. The
custom-op dispatcher is skipped in eager mode because it costs more per call than the whole
kernel on the small tensors of an MLP.
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
