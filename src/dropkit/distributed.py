"""Random streams for torch.distributed: which ranks share dropout masks and which must not.

Data parallelism (DDP, FSDP) gives every rank a different slice of the batch, so every rank
needs its own masks: the same mask on every rank would correlate the replicas' noise and
shrink dropout's effect on the averaged gradient. Tensor parallelism splits one layer across
the ranks of a group; an activation that every rank of the group holds in full (replicated)
must be dropped with the *same* mask everywhere, or the copies diverge, while an activation
that is sharded across the group needs a *different* mask on each shard, or the shards repeat
one pattern. Megatron-LM keeps two CUDA generator states for this ("model-parallel" and
default, in its RNG tracker; Shoeybi et al., "Megatron-LM", 2019). dropkit's masks are a pure
function of (seed, offset), so the same split is a choice of seed:

* ``replicated_seed = derive_seed(base, "data", dp_rank)``: one per data-parallel rank, the
  same on every rank of a tensor-parallel group.
* ``sharded_seed = derive_seed(base, "data", dp_rank, "tensor", tp_rank)``: one per rank.

:func:`seed_model` then gives each dropkit layer of a model its own stream,
``derive_seed(seed, qualified_name)``, so layers never share a mask either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from dropkit import _torch
from dropkit.layers._base import StreamModule
from dropkit.rng import check_seed, derive_seed, seed_to_signed

__all__ = ["SeedStreams", "seed_streams", "seed_model", "global_batch"]


@dataclass(frozen=True)
class SeedStreams:
    """The seeds of one process: which stream its replicated and its sharded activations use.

    Attributes:
        base_seed: the seed every process was given.
        data_parallel_rank: this process's rank in its data-parallel group (0 if none).
        tensor_parallel_rank: its rank in its tensor-parallel group (0 if none).
        replicated_seed: for dropout on activations every tensor-parallel rank holds in full
            (also the one to use with plain DDP or FSDP).
        sharded_seed: for dropout on activations split across the tensor-parallel group.

    Shape:
        Not applicable: a record of seeds (the masks keep their layers' ``(N, C, H, W)`` shapes).

    Example:
        >>> s = seed_streams(0, data_parallel_group=1)
        >>> s.data_parallel_rank, s.replicated_seed == derive_seed(0, "data", 1)
        (1, True)
    """

    base_seed: int
    data_parallel_rank: int
    tensor_parallel_rank: int
    replicated_seed: int
    sharded_seed: int


def _rank(group: object, name: str) -> int:
    if group is None:
        return 0
    if isinstance(group, bool) or not isinstance(group, (int, dist.ProcessGroup)):
        raise TypeError(f"{name} must be a torch.distributed ProcessGroup or an int rank, got {group!r}")
    if isinstance(group, int):
        if group < 0:
            raise ValueError(f"{name} as a rank must be non-negative, got {group}")
        return group
    if not dist.is_initialized():
        raise ValueError(f"{name} is a process group but torch.distributed is not initialized")
    return dist.get_rank(group)


def seed_streams(
    base_seed: int,
    *,
    data_parallel_group: dist.ProcessGroup | int | None = None,
    tensor_parallel_group: dist.ProcessGroup | int | None = None,
) -> SeedStreams:
    """Derive this process's dropout seeds from one ``base_seed`` shared by all processes.

    ``replicated_seed = derive_seed(base_seed, "data", d)`` and
    ``sharded_seed = derive_seed(base_seed, "data", d, "tensor", t)``, with ``d`` and ``t`` this
    process's ranks in the data- and tensor-parallel groups (see :func:`dropkit.rng.derive_seed`).
    So data-parallel ranks never share a stream, ranks of one tensor-parallel group share
    ``replicated_seed`` and differ in ``sharded_seed`` (Megatron-LM's split, Shoeybi et al. 2019).

    Args:
        base_seed: the run's seed, the same in every process; an int in [0, 2**64).
        data_parallel_group: the data-parallel process group, or this process's rank in it as an
            int. None means the whole world when torch.distributed is initialized and no
            tensor-parallel group is given (plain DDP/FSDP), and rank 0 otherwise (one process).
        tensor_parallel_group: the tensor-parallel process group, or the rank in it as an int;
            None means no tensor parallelism (rank 0).

    Shape:
        Not applicable: returns seeds; the masks they drive keep their layers' shapes
        (e.g. ``(N, C, H, W)`` activations).

    Example:
        >>> a = seed_streams(1, data_parallel_group=0)
        >>> b = seed_streams(1, data_parallel_group=1)
        >>> a.replicated_seed != b.replicated_seed
        True
        >>> seed_streams(1, tensor_parallel_group=0).replicated_seed == seed_streams(
        ...     1, tensor_parallel_group=1).replicated_seed
        True
    """
    base_seed = check_seed(base_seed, "base_seed")
    if data_parallel_group is None and tensor_parallel_group is None and dist.is_initialized():
        data_rank = dist.get_rank()
    else:
        data_rank = _rank(data_parallel_group, "data_parallel_group")
    tensor_rank = _rank(tensor_parallel_group, "tensor_parallel_group")
    replicated = derive_seed(base_seed, "data", data_rank)
    sharded = derive_seed(base_seed, "data", data_rank, "tensor", tensor_rank)
    return SeedStreams(base_seed, data_rank, tensor_rank, replicated, sharded)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def seed_model(
    model: nn.Module, seed: int | SeedStreams, *, sharded: Iterable[str] = ()
) -> dict[str, int]:
    """Give every dropkit layer of ``model`` its own stream: ``derive_seed(s, qualified_name)``.

    Each :class:`~dropkit.layers.StreamModule` in ``model`` becomes seeded (its seed and an
    offset of 0 go into buffers, so they are saved with the ``state_dict``). ``s`` is ``seed``
    itself if it is an int; for :class:`SeedStreams` it is ``sharded_seed`` for the layers named
    in ``sharded`` (and their children) and ``replicated_seed`` for all others. Call it before
    wrapping the model in DDP or FSDP, whose wrappers change the qualified names. The stream
    buffers are marked as ignored by DDP, which would otherwise overwrite every rank's seeds
    with rank 0's (it broadcasts rank 0's buffers at wrapping and before each forward).

    Args:
        model: the module to seed (unchanged if it holds no dropkit layer).
        seed: an int in [0, 2**64), or the result of :func:`seed_streams`.
        sharded: qualified names of layers (or parents) that see tensor-parallel shards as
            plain local tensors (Megatron-style); only with a SeedStreams. Layers that see
            DTensors stay out of it: the DTensor path gives each shard its block of one global
            mask and needs the same stream on every rank of the mesh (docs/reproducibility.md).

    Returns:
        ``{qualified_name: seed}`` for every layer seeded.

    Shape:
        Not applicable: the layers keep their input and output shapes (e.g. ``(N, C, H, W)``).

    Example:
        >>> from dropkit.layers import Dropout
        >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), Dropout(0.5), nn.Linear(128, 10))
        >>> seeds = seed_model(model, 0)
        >>> seeds == {"2": derive_seed(0, "2")}
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    prefixes = (sharded,) if isinstance(sharded, str) else tuple(sharded)
    if isinstance(seed, SeedStreams):
        replicated, sharded_seed = seed.replicated_seed, seed.sharded_seed
    else:
        if prefixes:
            raise ValueError(f"sharded={prefixes!r} needs seed=seed_streams(...), got the int {seed!r}")
        replicated = sharded_seed = check_seed(seed)
    names = {name for name, _ in model.named_modules()}
    unknown = [p for p in prefixes if p not in names]
    if unknown:
        raise ValueError(f"sharded names {unknown!r} are not modules of the model")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, StreamModule)]
    with_generator = [n for n, m in layers if m.generator is not None]
    if with_generator:
        raise ValueError(f"layers {with_generator!r} draw seeds from a generator; they cannot be seeded too")
    seeds = {}
    for name, module in layers:
        base = sharded_seed if _under(name, prefixes) else replicated
        seeds[name] = derive_seed(base, name)
        _set_stream(module, seeds[name])
    # DDP copies rank 0's buffers to every rank when it wraps the model and, by default, before
    # every forward; that would hand every rank rank 0's seed. Stream buffers are per-rank state.
    stream_buffers = [f"{n}.{b}" if n else b for n in seeds for b in ("seed", "offset")]
    _torch.ddp_ignore_buffers(model, stream_buffers)
    return seeds


def _set_stream(module: StreamModule, seed: int) -> None:
    """Make ``module`` own the stream ``(seed, 0)``, on the device of its existing tensors."""
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    device = tensors[0].device if tensors else torch.device("cpu")
    for name in ("seed", "offset"):
        if name not in _torch.buffer_slots(module):
            delattr(module, name)
    module.register_buffer("seed", torch.tensor(seed_to_signed(seed), dtype=torch.int64, device=device))
    module.register_buffer("offset", torch.zeros((), dtype=torch.int64, device=device))
    module._own = None


@contextlib.contextmanager
def global_batch(mesh: object, mesh_dim: int | str = 0, batch_dim: int = 0) -> Iterator[None]:
    r"""Inside, dropout draws the masks one process would draw on the whole batch of a
    data-parallel run, so the masks do not depend on the data-parallel degree.

    Data parallelism (DDP, FSDP2's ``fully_shard``, the data dim of FSDP x TP) splits a global
    batch of ``D * b`` rows over the ``D`` ranks of the data-parallel dim ``mesh_dim`` of
    ``mesh``: rank ``r`` holds rows ``r * b .. (r + 1) * b - 1`` (its shard in rank order).
    Inside this context every dropout that dropkit runs takes its input as that shard: a plain
    tensor as ``Shard(batch_dim)`` over the data-parallel dim (and replicated over the others),
    a DTensor on the rest of the mesh (tensor parallelism) with ``Shard(batch_dim)`` added, and
    applies its block of the mask of the global tensor:

    .. math:: y_r = \text{dropout}(\text{cat}(x_0, \ldots, x_{D-1}), p)[r b : (r + 1) b].

    Every rank advances its streams by the global mask size, so all ranks must hold the same
    seeds (the opposite of :func:`seed_streams`, whose per-rank seeds give per-rank masks); the
    ranks check that they agree, and that their batch sizes are equal, at each call (one
    all-reduce each). Dropout, ``shared_dims``, Dropout1d/2d/3d, DropPath/StochasticDepth,
    locked dropout, (feature) alpha dropout, Gaussian dropout and noise, DropBlock, Concrete
    dropout and ``dropout_add_norm`` run inside; weight dropouts (embedding dropout,
    DropConnect) draw their whole masks on every rank, as one process does once per batch. Eager
    mode only; the context is process-wide (not per thread).

    Args:
        mesh: a ``DeviceMesh`` (1-D for DDP/FSDP, 2-D for FSDP x TP).
        mesh_dim: the data-parallel dim of ``mesh``, by index or name.
        batch_dim: the batch dim of the activations.

    Shape:
        Any: each rank's tensors keep their local shape; the mask is drawn over the global one.

    Example (under torchrun; examples/dtensor_tp.py trains with it)::

        mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
        with dropkit.distributed.global_batch(mesh, "dp"):
            loss = model(local_batch).mean()
    """
    from dropkit import _dtensor

    if mesh.__class__.__name__ != "DeviceMesh":
        raise TypeError(f"global_batch needs a torch.distributed DeviceMesh, got {type(mesh).__name__}")
    names = mesh.mesh_dim_names or ()
    if isinstance(mesh_dim, str):
        if mesh_dim not in names:
            raise ValueError(f"mesh_dim {mesh_dim!r} is not a dim of the mesh (its dims: {names})")
        mesh_dim = names.index(mesh_dim)
    if not isinstance(mesh_dim, int) or not 0 <= mesh_dim < mesh.ndim:
        raise ValueError(f"mesh_dim must name one of the mesh's {mesh.ndim} dims, got {mesh_dim!r}")
    if not isinstance(batch_dim, int) or isinstance(batch_dim, bool) or batch_dim < 0:
        raise ValueError(f"batch_dim must be an int >= 0, got {batch_dim!r}")
    if _dtensor.global_batch_mesh is not None:
        raise RuntimeError("dropkit.distributed.global_batch is already active; it does not nest")
    _dtensor.global_batch_mesh = (mesh, mesh_dim, batch_dim)
    try:
        yield
    finally:
        _dtensor.global_batch_mesh = None
