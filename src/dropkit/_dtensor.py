"""Dropout on DTensor: each rank applies its slice of the mask one process would draw.

dropkit's masks are a pure function of ``(seed, offset, element index)`` (docs/rng.md): word
``i`` of the stream is lane ``i mod 4`` of the Philox block at counter ``offset + i // 4``. A
DTensor's rank holds a rectangular block of the global tensor (``Shard(d)`` on any dim, uneven
shards, 2-D meshes) or all of it (``Replicate``, ``Partial``), so each rank computes the global
row-major index of each of its elements (of the reduced mask, for shared masks), draws exactly
those words, and applies them to its local tensor. Nothing is gathered, and ``full_tensor()``
of the result equals the same call on ``x.full_tensor()`` in one process, bit for bit.

* The stream advances by the **global** mask size on every rank, so the ranks stay in step.
* ``Partial``: dropout is linear given its mask, so every rank applies the same mask to its
  partial value and the result stays ``Partial`` (Gaussian dropout likewise); alpha dropout and
  Gaussian noise are not linear in ``x`` and refuse it.
* The same holds for alpha dropout (the mask words), Gaussian dropout and noise (the
  normals, :func:`normals_at`) and DropBlock (:func:`drop_block`: the seeds of the block and
  of its halo, and the global kept count) and Concrete dropout (:func:`apply_concrete`);
  :func:`rowwise` runs ``dropout_add_norm``'s norm.
* Before drawing, the ranks check that they hold the same stream position (one all-reduce
  over the mesh): different seeds per rank would silently give per-rank masks, so they raise.
* What is not supported (a placement other than ``Replicate``/``Shard``/``Partial``, such as
  FSDP2's ``_StridedShard``; torch.compile around a DTensor call) raises, naming it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

from dropkit import _torch
from dropkit.backends._shared import (
    dropblock_applied_scale,
    dropblock_mask_shape,
    dropblock_scale,
    dropblock_seed_shape,
    normal_cos_sin,
    normal_log,
    opmath_dtype,
    sqrt_rn,
)
from dropkit.rng import _MASK32, _philox_rounds, signed_to_seed, words_to_uniform

__all__ = [
    "is_dtensor", "routes", "apply_dropout", "apply_alpha", "apply_gaussian", "apply_concrete", "drop_block",
    "words_at", "normals_at", "rowwise", "outside_global_batch", "global_batch_mesh",
]

# (mesh, data-parallel mesh dim, batch dim) while dropkit.distributed.global_batch is active, else
# None: read by dropkit.functional.dropout on every call and by the ops' input guard.
global_batch_mesh: tuple | None = None


def is_dtensor(x: torch.Tensor) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor``.

    Example:
        >>> is_dtensor(torch.ones(2))
        False
    """
    if type(x) is torch.Tensor:
        return False
    cls = _torch._dtensor_type()
    return cls is not None and isinstance(x, cls)


@contextlib.contextmanager
def outside_global_batch() -> Iterator[None]:
    """Suspend :func:`dropkit.distributed.global_batch` for a draw on a tensor that is not a
    shard of the batch (a weight: every rank holds all of it and draws its whole mask, as one
    process would draw it once for the whole batch).

    Example:
        >>> with outside_global_batch():
        ...     routes(torch.ones(2))
        False
    """
    global global_batch_mesh
    saved, global_batch_mesh = global_batch_mesh, None
    try:
        yield
    finally:
        global_batch_mesh = saved


def routes(x: torch.Tensor) -> bool:
    """Whether a draw on ``x`` takes the DTensor path: ``x`` is a DTensor, or a
    :func:`dropkit.distributed.global_batch` context is active.

    Example:
        >>> routes(torch.ones(2))
        False
    """
    return (type(x) is not torch.Tensor and is_dtensor(x)) or global_batch_mesh is not None


def words_at(seed: int, offset: int, index: torch.Tensor) -> torch.Tensor:
    """Stream words ``w[index]`` of the stream ``(seed, offset)``, for any int64 ``index`` tensor.

    ``w[i]`` is lane ``i mod 4`` of Philox4x32-10 at counter ``offset + i // 4`` (mod 2**64)
    under the key ``(seed mod 2**32, seed >> 32)``: the words :func:`dropkit.rng.philox_words`
    lays out in a row.

    Shape:
        index: ``(*)``; output: ``(*)``, int64 words in [0, 2**32).

    Example:
        >>> from dropkit.rng import philox_words
        >>> i = torch.tensor([5, 0, 9])
        >>> torch.equal(words_at(7, 3, i), philox_words(7, 3, 10)[i])
        True
    """
    block = index >> 2
    lo = (offset & _MASK32) + block
    c0 = lo & _MASK32
    c1 = ((offset >> 32) + (lo >> 32)) & _MASK32
    zero = torch.zeros_like(block)
    words = torch.stack(_philox_rounds(c0, c1, zero, zero, seed & _MASK32, seed >> 32, 10), dim=-1)
    return words.gather(-1, (index & 3).unsqueeze(-1)).squeeze(-1)


def _global_index(shape: tuple[int, ...], offset: tuple[int, ...], box: tuple[int, ...],
                  device: torch.device) -> torch.Tensor:
    """Row-major indices in ``shape`` of the block ``offset + [0, box)``, shaped ``box``."""
    index = torch.zeros((), dtype=torch.int64, device=device)
    stride = 1
    for d in reversed(range(len(shape))):
        along = torch.arange(offset[d], offset[d] + box[d], dtype=torch.int64, device=device) * stride
        index = index + along.view((-1,) + (1,) * (len(shape) - 1 - d))
        stride *= shape[d]
    return index.expand(box)


def _host(value: int | torch.Tensor) -> int:
    return value if type(value) is int else signed_to_seed(int(value))


def _check_placements(placements: tuple, what: str) -> None:
    from torch.distributed.tensor import Partial, Replicate, Shard

    for p in placements:
        if type(p) not in (Replicate, Shard, Partial):
            raise TypeError(
                f"{what} on a DTensor supports the placements Replicate, Shard(d) and Partial, got "
                f"{p!r}; redistribute the tensor first (a per-rank mask is never drawn instead)"
            )


def _agree(mesh: object, seed: int, offset: int) -> None:
    """Raise unless every rank of ``mesh`` holds the stream position ``(seed, offset)``."""
    import torch.distributed as dist

    words = [seed & _MASK32, seed >> 32, offset & _MASK32, offset >> 32]
    t = torch.tensor(words + [-w for w in words], dtype=torch.int64, device=mesh.device_type)
    for dim in range(mesh.ndim):
        dist.all_reduce(t, dist.ReduceOp.MAX, group=mesh.get_group(dim))
    if not torch.equal(t[:4], -t[4:]):
        raise RuntimeError(
            f"the ranks of the DTensor's mesh draw from different stream positions (this rank: "
            f"seed={seed}, offset={offset}), which would give each rank a mask of its own; give "
            "every rank the same seed (torch.manual_seed, or the same seed= on each rank), as one "
            "process would use"
        )


class _LocalDropout(torch.autograd.Function):
    """``where(keep, x * scale, 0)`` on the local tensor, rounded as the backends round it;
    linear with the same mask, so its backward is itself."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        opmath = opmath_dtype(x.dtype)
        s = torch.tensor(scale, dtype=opmath, device=x.device)
        return torch.where(keep, x.to(opmath) * s, torch.zeros((), dtype=opmath, device=x.device)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _LocalDropout.apply(grad, keep, ctx.scale), None, None


class _LocalAlpha(torch.autograd.Function):
    """``where(keep, x * a + b, fill)`` on the local tensor, each step rounded in the opmath
    dtype; its gradient is ``where(keep, grad * a, 0)``."""

    @staticmethod
    def forward(ctx, x, keep, a, b, fill):
        ctx.save_for_backward(keep)
        ctx.a = a
        dt = opmath_dtype(x.dtype)
        a_t, b_t, fill_t = (torch.full((), v, dtype=dt, device=x.device) for v in (a, b, fill))
        return torch.where(keep, x.to(dt) * a_t + b_t, fill_t).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _LocalDropout.apply(grad, keep, ctx.a), None, None, None, None


class _LocalGaussian(torch.autograd.Function):
    """``x + cz`` (``additive``) or ``x * (1 + cz)`` in ``cz``'s dtype, rounded once to ``x``'s;
    the gradient is the incoming one (additive) or the same map of it."""

    @staticmethod
    def forward(ctx, x, cz, additive):
        ctx.additive = additive
        if not additive:
            ctx.save_for_backward(cz)
        xc = x.to(cz.dtype)
        return (xc + cz if additive else xc * (1.0 + cz)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        if ctx.additive:
            return grad, None, None
        (cz,) = ctx.saved_tensors
        return _LocalGaussian.apply(grad, cz, False), None, None


def _lift(x: torch.Tensor) -> torch.Tensor:
    """``x`` as this rank's shard of the global batch: a DTensor on the whole mesh of
    :func:`dropkit.distributed.global_batch`, ``Shard(batch_dim)`` on its data-parallel dim."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard

    mesh, dp, batch_dim = global_batch_mesh
    if is_dtensor(x):
        if x.device_mesh == mesh:
            return x
        rest = [i for i in range(mesh.ndim) if i != dp]
        if len(rest) != x.device_mesh.ndim or any(
                mesh.mesh_dim_names is None or x.device_mesh.mesh_dim_names is None
                or x.device_mesh.mesh_dim_names[j] != mesh.mesh_dim_names[i] for j, i in enumerate(rest)):
            raise TypeError(
                f"inside dropkit.distributed.global_batch a DTensor must live on the mesh {mesh} or on "
                f"its sub-mesh without the data-parallel dim, got {x.device_mesh}")
        placements = list(x.placements)
        local = x.to_local()
    else:
        placements = [Replicate()] * (mesh.ndim - 1)
        local = x
    if x.dim() <= batch_dim:
        raise ValueError(f"global_batch's batch dim {batch_dim} is out of range for a {x.dim()}-dim tensor")
    if any(type(p) is Shard and p.dim == batch_dim for p in placements):
        raise TypeError(f"inside dropkit.distributed.global_batch the batch dim {batch_dim} must not be "
                        f"sharded again, got placements {tuple(placements)}")
    placements.insert(dp, Shard(batch_dim))
    rows = x.shape[batch_dim]
    sizes = torch.tensor([rows, -rows], dtype=torch.int64, device=mesh.device_type)
    dist.all_reduce(sizes, dist.ReduceOp.MAX, group=mesh.get_group(dp))
    largest, smallest = int(sizes[0]), -int(sizes[1])
    if largest != rows or smallest != rows:
        raise ValueError(f"global_batch needs the same batch size on every data-parallel rank; this rank "
                         f"has {rows}, the others range from {smallest} to {largest}")
    shape = list(x.shape)
    shape[batch_dim] = rows * mesh.size(dp)
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=_contiguous_strides(tuple(shape)))


def _lower(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_lift`: ``y``'s local block in the form ``like`` had."""
    from torch.distributed.tensor import DTensor

    if not is_dtensor(like):
        return y.to_local()
    if y.device_mesh == like.device_mesh:
        return y
    return DTensor.from_local(y.to_local(), like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def apply_dropout(
    x: torch.Tensor, threshold: int, scale: float, dims: tuple[int, ...], stream: object, inplace: bool
) -> torch.Tensor:
    """:func:`dropkit.functional.dropout.apply_dropout` for a DTensor ``x``: the mask over
    ``x``'s global shape with ``dims`` shared, each rank applying its own block of it. Inside
    :func:`dropkit.distributed.global_batch`, ``x`` (a DTensor or a plain tensor) is first taken
    as this rank's shard of the global batch.

    Shape:
        x: any global shape; output: a DTensor of the same shape, mesh and placements.
    """

    def local(block: torch.Tensor, seed: int, offset: int, where: _Block) -> torch.Tensor:
        index = where.index(dims, block.device)
        if threshold <= 0:
            keep = torch.ones(index.shape, dtype=torch.bool, device=block.device)
        else:
            keep = words_at(seed, offset, index) >= threshold
        return _LocalDropout.apply(block, keep, scale)

    return _run(x, "dropout", _reduced_count(dims), local, stream, inplace, linear=True)


def apply_alpha(
    x: torch.Tensor, dims: tuple[int, ...], threshold: int, a: float, b: float, fill: float, stream: object,
    inplace: bool,
) -> torch.Tensor:
    """Alpha dropout (``dims`` shared: feature alpha dropout) for a DTensor ``x``:
    ``where(keep, x * a + b, fill)`` with each rank's block of the one-process mask, rounded as
    :func:`dropkit.backends.reference.alpha_forward` rounds it. Alpha dropout is affine, not
    linear, so a ``Partial`` placement is refused.

    Shape:
        x: any global shape; output: a DTensor of the same shape, mesh and placements.
    """

    def local(block: torch.Tensor, seed: int, offset: int, where: _Block) -> torch.Tensor:
        keep = words_at(seed, offset, where.index(dims, block.device)) >= threshold
        return _LocalAlpha.apply(block, keep, a, b, fill)

    return _run(x, "alpha dropout", _reduced_count(dims), local, stream, inplace, linear=False)


def apply_gaussian(x: torch.Tensor, c: float, additive: bool, stream: object, inplace: bool) -> torch.Tensor:
    """Gaussian dropout (``x * (1 + c z)``) or noise (``x + c z``, ``additive``) for a DTensor
    ``x``: element ``i`` (global row-major) takes the normal ``z[i]`` one process draws
    (:func:`normals_at`), rounded as :func:`dropkit.backends.reference.gaussian_apply` rounds
    it. The stream advances by ``2 * ceil(numel / 2)`` words. Additive noise on a ``Partial``
    DTensor would be added once per rank, so it is refused; the multiplicative form is linear.

    Shape:
        x: any global shape; output: a DTensor of the same shape, mesh and placements.
    """

    def local(block: torch.Tensor, seed: int, offset: int, where: _Block) -> torch.Tensor:
        dt = opmath_dtype(block.dtype)
        z = normals_at(seed, offset, where.index((), block.device), dt)
        return _LocalGaussian.apply(block, torch.full((), c, dtype=dt, device=block.device) * z, additive)

    what = "gaussian_noise" if additive else "gaussian_dropout"
    words = lambda shape: 2 * ((math.prod(shape) + 1) // 2)  # noqa: E731
    return _run(x, what, words, local, stream, inplace, linear=not additive)


def drop_block(x: torch.Tensor, blocks: tuple[int, ...], threshold: int, shared_channels: bool, stream: object
               ) -> tuple[torch.Tensor, int]:
    """DropBlock on a batched DTensor ``x`` ``(N, C, *spatial)``: ``(y, kept)`` with ``y`` each
    rank's block of the one-process output and ``kept`` the global count of kept positions of
    the mask ``(N, C or 1, *spatial)``.

    Seed ``k`` of the grid ``(N, C or 1, f - b + 1, ...)`` is set iff word ``k`` < ``threshold``
    (:func:`dropkit.backends.reference.dropblock_mask`); each rank draws the seeds of its block
    and of the ``b - 1`` positions before it along each spatial axis (a halo read from the
    stream, not from another rank), so blocks that cross a shard border drop on both sides. The
    kept count is summed over the mesh dims that split the mask (one all-reduce each), and
    ``y = where(keep, x * count / kept, 0)`` rounded as the backends round it.

    Shape:
        x: ``(N, C, *spatial)`` with 2 or 3 spatial dims; ``y``: the same, x's placements.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    found: dict[str, int] = {}

    def local(block: torch.Tensor, seed: int, offset: int, where: _Block) -> torch.Tensor:
        grid = dropblock_seed_shape(where.shape, blocks, shared_channels)
        o = list(where.start)
        n = list(where.local_shape)
        if shared_channels:
            o[1], n[1] = 0, 1
        starts = o[:2] + [o[d] - b + 1 for d, b in zip(range(2, len(o)), blocks, strict=True)]
        sizes = n[:2] + [n[d] + b - 1 for d, b in zip(range(2, len(n)), blocks, strict=True)]
        index = torch.zeros((), dtype=torch.int64, device=block.device)
        valid = torch.ones((), dtype=torch.bool, device=block.device)
        stride = 1
        for d in reversed(range(len(grid))):
            along = torch.arange(starts[d], starts[d] + sizes[d], dtype=torch.int64, device=block.device)
            view = (-1,) + (1,) * (len(grid) - 1 - d)
            valid = valid & ((along >= 0) & (along < grid[d])).view(view)
            index = index + (along.clamp(0, max(grid[d] - 1, 0)) * stride).view(view)
            stride *= grid[d]
        index = index.expand(sizes)
        if math.prod(n) == 0:
            keep = torch.ones(n, dtype=torch.bool, device=block.device)
        else:
            seeds = (words_at(seed, offset, index) < threshold) & valid
            pool = torch.nn.functional.max_pool2d if len(blocks) == 2 else torch.nn.functional.max_pool3d
            keep = pool(seeds.to(torch.float32), kernel_size=blocks, stride=1) == 0
        kept = torch.tensor([int(keep.sum())], dtype=torch.int64, device=where.mesh.device_type)
        for i, p in enumerate(where.placements):  # ranks whose blocks of the mask differ
            if type(p) is Shard and not (shared_channels and p.dim == 1):
                dist.all_reduce(kept, group=where.mesh.get_group(i))
        found["kept"] = int(kept)
        count = math.prod(dropblock_mask_shape(where.shape, shared_channels))
        scale = dropblock_applied_scale(dropblock_scale(count, found["kept"]), block.dtype)
        return _LocalDropout.apply(block, keep, scale)

    words = lambda shape: math.prod(dropblock_seed_shape(shape, blocks, shared_channels))  # noqa: E731
    y = _run(x, f"drop_block{len(blocks)}d", words, local, stream, False, linear=True)
    return y, found["kept"]


def apply_concrete(
    x: torch.Tensor, p_logit: torch.Tensor, dims: tuple[int, ...], stream: object,
    formula: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Concrete dropout for a DTensor ``x`` (or a plain ``x`` inside ``global_batch``): element
    ``i`` of the mask (``dims`` shared) takes the uniform of word ``i``, as one process draws
    it, and each rank applies ``formula(block, u, p_logit)`` (the relaxed mask of
    :func:`dropkit.functional.concrete_dropout`) to its block.

    ``p_logit`` (plain, taken as replicated, or a replicated DTensor) gets the gradient summed
    over the ranks that hold different blocks, as one process's; a plain ``x`` inside
    ``global_batch`` leaves ``p_logit``'s gradient per rank, for DDP to reduce. The
    transcendental functions are torch's, whose vector and scalar paths may round the last bit
    apart, so the result agrees with one process to rounding, not bit for bit.

    Shape:
        x: any global shape; output: a DTensor of the same shape, mesh and placements.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate

    if global_batch_mesh is not None and is_dtensor(x):
        raise TypeError("concrete_dropout on a DTensor inside dropkit.distributed.global_batch is not "
                        "supported (its p_logit gradient would be reduced twice); call it outside the "
                        "context, or on plain per-rank tensors")
    wrap = is_dtensor(x)

    def local(block: torch.Tensor, seed: int, offset: int, where: _Block) -> torch.Tensor:
        words = words_at(seed, offset, where.index(dims, block.device))
        u = words_to_uniform(words, opmath_dtype(block.dtype))
        logit = p_logit
        if wrap:
            if not is_dtensor(logit):
                replicated = [Replicate()] * where.mesh.ndim
                logit = DTensor.from_local(logit, where.mesh, replicated, run_check=False)
            grads = [Replicate() if p.is_replicate() else Partial() for p in where.placements]
            logit = logit.to_local(grad_placements=grads)
        return formula(block, u, logit)

    return _run(x, "concrete_dropout", _reduced_count(dims), local, stream, False, linear=True)


def normals_at(seed: int, offset: int, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Standard normals ``z[index]`` of the stream ``(seed, offset)``, as
    :func:`dropkit.backends.reference.normal` draws them: ``z[2k] = r cos`` and
    ``z[2k + 1] = r sin`` of the Box-Muller pair of words ``w[2k]``, ``w[2k + 1]``.

    Shape:
        index: ``(*)`` int64; output: ``(*)`` of ``dtype``.

    Example:
        >>> from dropkit.backends.reference import normal
        >>> i = torch.tensor([4, 1, 2])
        >>> torch.equal(normals_at(3, 7, i, torch.float64), normal(5, 3, 7, torch.float64)[i])
        True
    """
    first = index & ~1
    r = sqrt_rn(normal_log(words_at(seed, offset, first) >> 8) * -2.0)
    cos, sin = normal_cos_sin(words_at(seed, offset, first + 1) >> 8)
    return torch.where((index & 1) == 0, r * cos, r * sin).to(dtype)


def rowwise(fn: object, h: torch.Tensor, *params: torch.Tensor | None) -> torch.Tensor:
    """``fn(h, *params)`` for a norm over the last dim of the DTensor ``h``: plain ``params``
    (a norm's weight and bias) are taken as replicated on ``h``'s mesh; if the last dim is
    sharded, ``h`` is gathered along it first and the result is put back on ``h``'s placements.

    Shape:
        h: ``(*, C)``; params: ``(C,)`` or None; output: ``(*, C)``, ``h``'s placements.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    mesh, placements = h.device_mesh, tuple(h.placements)
    params = tuple(
        DTensor.from_local(t, mesh, [Replicate()] * mesh.ndim, run_check=False)
        if t is not None and not is_dtensor(t) else t for t in params
    )
    last = h.dim() - 1
    whole = tuple(Replicate() if type(p) is Shard and p.dim in (last, -1) else p for p in placements)
    if whole == placements:
        return fn(h, *params)
    return fn(h.redistribute(mesh, whole), *params).redistribute(mesh, placements)


class _Block(NamedTuple):
    """Where this rank's block lies: the global ``shape``, the block's ``local_shape`` and its
    ``start`` in the global tensor, on ``mesh`` with ``placements``."""

    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    start: tuple[int, ...]
    mesh: Any
    placements: tuple

    def index(self, dims: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Global row-major indices of the block's elements in ``shape`` with ``dims`` reduced
        to 1 (a shared mask), shaped as the block with ``dims`` of size 1."""
        reduced = tuple(1 if d in dims else s for d, s in enumerate(self.shape))
        box = tuple(1 if d in dims else n for d, n in enumerate(self.local_shape))
        start = tuple(0 if d in dims else o for d, o in enumerate(self.start))
        return _global_index(reduced, start, box, device)


def _reduced_count(dims: tuple[int, ...]) -> Callable[[tuple[int, ...]], int]:
    return lambda shape: math.prod(1 if d in dims else s for d, s in enumerate(shape))


def _run(x: torch.Tensor, what: str, words_for: Callable[[tuple[int, ...]], int], local: Callable,
         stream: object, inplace: bool, linear: bool) -> torch.Tensor:
    """Apply ``local(block, seed, offset, where)`` to each rank's block of the DTensor ``x``
    (``where``: a :class:`_Block`); the stream advances by ``words_for(global shape)`` on every
    rank. Inside :func:`dropkit.distributed.global_batch` a plain ``x`` is lifted to its
    global-batch DTensor first, and the result lowered back."""
    if global_batch_mesh is not None:
        lifted = _lift(x)
        if lifted is not x:
            y = _lower(_run_dtensor(lifted, what, words_for, local, stream, linear), x)
            return x.copy_(y) if inplace else y
    y = _run_dtensor(x, what, words_for, local, stream, linear)
    return x.copy_(y) if inplace else y


def _run_dtensor(x: torch.Tensor, what: str, words_for: Callable[[tuple[int, ...]], int], local: Callable,
                 stream: object, linear: bool) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if torch.compiler.is_compiling():
        raise RuntimeError(f"dropkit's DTensor {what} runs in eager mode; torch.compile around it "
                           "is not supported")
    mesh, placements = x.device_mesh, tuple(x.placements)
    _check_placements(placements, what)
    if not linear and any(p.is_partial() for p in placements):
        raise TypeError(
            f"{what} on a DTensor with placements {placements}: it is not linear in x, so it cannot "
            "be applied to partial values; redistribute to Replicate or Shard first"
        )
    shape = tuple(x.shape)
    seed, offset = stream.take(words_for(shape))  # the global count, on every rank
    seed, offset = _host(seed), _host(offset)
    _agree(mesh, seed, offset)
    block = x.to_local()
    local_shape, global_offset = _torch.local_box(shape, mesh, placements)
    if tuple(block.shape) != local_shape:
        raise RuntimeError(f"this rank's block of the DTensor has shape {tuple(block.shape)}, not the "
                           f"{local_shape} its placements {placements} give")
    y = local(block, seed, offset, _Block(shape, local_shape, global_offset, mesh, placements))
    return DTensor.from_local(y, mesh, placements, run_check=False, shape=x.shape, stride=x.stride())


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: object, p: float,
              is_causal: bool, scale: float | None, enable_gqa: bool, stream: object) -> torch.Tensor:
    """Attention dropout on DTensors sharded over batch or head dims: each rank runs attention
    on its (batch, head) matrices with the words those matrices have in one process.

    ``query``, ``key`` and ``value`` share mesh and placements (``Replicate`` or ``Shard(d)`` with
    ``d`` a batch or head dim); the probabilities ``(*batch, L, S)`` draw one word per element,
    so matrix ``g`` (global row-major over the batch dims) starts at word ``g * L * S``.

    Shape:
        query ``(*batch, L, E)``, key ``(*batch, S, E)``, value ``(*batch, S, Ev)``; output
        ``(*batch, L, Ev)``, a DTensor with the query's placements.
    """
    from torch.distributed.tensor import DTensor, Shard

    from dropkit.functional.attention import _sdpa
    from dropkit.rng import Stream

    if torch.compiler.is_compiling():
        raise RuntimeError("dropkit's DTensor attention runs in eager mode; torch.compile around it "
                           "is not supported")
    mesh, placements = query.device_mesh, tuple(query.placements)
    _check_placements(placements, "scaled_dot_product_attention")
    batch_dims = query.dim() - 2
    for t in (key, value):
        if not is_dtensor(t) or t.device_mesh != mesh or tuple(t.placements) != placements:
            got = getattr(t, "placements", type(t).__name__)
            raise TypeError("scaled_dot_product_attention on DTensors needs query, key and value on one "
                            f"mesh with the same placements, got {placements} and {got}")
    if any(type(p_) is not Shard and not p_.is_replicate() or type(p_) is Shard and p_.dim >= batch_dims
           for p_ in placements) or attn_mask is not None or enable_gqa or key.shape[:-2] != query.shape[:-2]:
        raise TypeError("scaled_dot_product_attention on DTensors supports Replicate and Shard over the "
                        f"batch and head dims, without attn_mask or enable_gqa; got {placements}")
    batch, length, s_len = tuple(query.shape[:-2]), query.shape[-2], key.shape[-2]
    per_matrix = length * s_len
    seed, offset = stream.take(math.prod(batch) * per_matrix)
    seed, offset = _host(seed), _host(offset)
    _agree(mesh, seed, offset)
    if per_matrix % 4 and math.prod(batch) > 1 and any(type(p_) is Shard for p_ in placements):
        raise TypeError(f"scaled_dot_product_attention on sharded DTensors needs L * S divisible by 4 (each "
                        f"matrix starting on a Philox block), got L={length}, S={s_len}")
    q, k, v = query.to_local(), key.to_local(), value.to_local()
    local_batch, start = _torch.local_box(tuple(query.shape), mesh, placements)
    local_batch, start = local_batch[:-2], start[:-2]
    matrices = _global_index(batch, start, local_batch, q.device).reshape(-1).tolist()
    qf, kf, vf = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    outs, first = [], 0
    for j in range(1, len(matrices) + 1):  # runs of consecutive matrices, one call each
        if j == len(matrices) or matrices[j] != matrices[j - 1] + 1:
            run = Stream(seed, offset + matrices[first] * per_matrix // 4)
            outs.append(_sdpa(qf[first:j], kf[first:j], vf[first:j], None, p, is_causal, scale, False, run))
            first = j
    if outs:
        local = torch.cat(outs)
    else:  # an empty shard: still in the graph, so that every rank's backward runs alike
        local = vf.new_empty((0, length, v.shape[-1])) + (qf.sum() + kf.sum() + vf.sum()) * 0
    local = local.reshape(*local_batch, length, v.shape[-1])
    shape = (*batch, length, value.shape[-1])
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=_contiguous_strides(shape))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
