"""A transformer MLP block trained with FSDP2 x tensor parallelism on DTensor: every dropout mask
is the one a single process draws on the whole batch, whatever the mesh (CPU, gloo).

    python examples/dtensor_tp.py                                                   # one process
    python -m torch.distributed.run --nproc_per_node 2 examples/dtensor_tp.py       # TP = 2
    python -m torch.distributed.run --nproc_per_node 4 examples/dtensor_tp.py       # TP = 4
    python -m torch.distributed.run --nproc_per_node 4 examples/dtensor_tp.py --dp 2  # FSDP 2 x TP 2
    python -m torch.distributed.run --nproc_per_node 4 examples/dtensor_tp.py --dp 2 --sp  # and SP

The block ``x + Dropout(W2 Dropout(GELU(W1 LayerNorm(x))))`` is split with
``parallelize_module`` over the mesh's "tp" dim: W1 by columns (its output, the hidden
activation, is a DTensor sharded on its last dim) and W2 by rows (its output is a replicated
DTensor). Both keep DTensor outputs (``use_local_output=False``), so dropkit's dropout sees the
global shape and each rank applies its block of the one-process mask. ``fully_shard`` then
shards the parameters over the "dp" dim, each data-parallel rank taking its rows of the batch;
inside ``dropkit.distributed.global_batch`` the masks are drawn for the whole batch, so they do
not depend on the data-parallel degree either.

Rank 0 prints, per step, a checksum of each dropout's global mask and the loss; the lines agree
across meshes (the losses up to the order of the sums in the reductions).
``--save DIR`` writes a distributed checkpoint (``torch.distributed.checkpoint``) after the
steps and ``--load DIR`` resumes from one, on any mesh: the resumed steps print the lines of an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

import dropkit
from dropkit.distributed import global_batch

try:  # torch >= 2.6; torch 2.5 keeps it under _composable (and runs it on CUDA only)
    from torch.distributed.fsdp import fully_shard
except ImportError:  # pragma: no cover
    from torch.distributed._composable.fsdp import fully_shard

BATCH, TOKENS, WIDTH, HIDDEN = 4, 5, 8, 16


class Block(nn.Module):
    def __init__(self, d: int, hidden: int, p: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, hidden)
        self.hidden_dropout = dropkit.Dropout(p, seed=11)
        self.w2 = nn.Linear(hidden, d)
        self.out_dropout = dropkit.Dropout(p, seed=12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden_dropout(nn.functional.gelu(self.w1(self.norm(x))))
        out = self.out_dropout(self.w2(h))  # replicated over TP (sharded over tokens with --sp)
        if isinstance(out, DTensor) and not isinstance(x, DTensor):
            out = out.to_local()
        return x + out


def checksum(mask: torch.Tensor) -> int:
    """Sum of (index + 1) over the kept elements of a global mask: equal masks, equal sums."""
    flat = mask.reshape(-1)
    return int(((torch.arange(flat.numel()) + 1) * flat).sum())


def batch(step: int) -> torch.Tensor:
    """The global batch of ``step``, the same in every run."""
    return torch.randn(BATCH, TOKENS, WIDTH, generator=torch.Generator().manual_seed(1000 + step))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dp", type=int, default=1, help="data-parallel (FSDP2) degree; TP = world / dp")
    parser.add_argument("--save", default=None, help="write a distributed checkpoint here after the steps")
    parser.add_argument("--load", default=None, help="resume from the distributed checkpoint here")
    parser.add_argument("--sp", action="store_true", help="sequence parallel: LayerNorm, residual and the "
                        "output dropout on token shards")
    args = parser.parse_args()
    if "RANK" not in os.environ:  # one process: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if world % args.dp or BATCH % args.dp:
        raise SystemExit(f"--dp {args.dp} must divide the world size {world} and the batch {BATCH}")
    dp, tp = args.dp, world // args.dp
    if dp > 1 and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 6):
        raise SystemExit(f"fully_shard (FSDP2) runs on CPU from torch 2.6 on, not {torch.__version__}")
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(0)
    block = Block(WIDTH, HIDDEN, 0.25)
    if world > 1:
        if args.sp:  # activations outside the MLP sharded over tokens (dim 1), uneven shards too
            plan = {"norm": SequenceParallel(),
                    "w1": ColwiseParallel(input_layouts=Shard(1), use_local_output=False),
                    "w2": RowwiseParallel(output_layouts=Shard(1), use_local_output=False)}
        else:
            plan = {"w1": ColwiseParallel(use_local_output=False),
                    "w2": RowwiseParallel(use_local_output=False)}
        parallelize_module(block, mesh["tp"], plan)
        if dp > 1:
            fully_shard(block, mesh=mesh["dp"])
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9)
    first = 0
    if args.load:
        model_sd, optim_sd = get_state_dict(block, optimizer)
        state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=args.load)
        set_state_dict(block, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        first = int(state["step"])
    dp_rank, dp_group = mesh.get_local_rank("dp"), mesh.get_group("dp")
    masks: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output):
            full = output.full_tensor() if isinstance(output, DTensor) else output
            if dp > 1:  # each data-parallel rank holds its rows of the batch
                rows = [torch.empty_like(full) for _ in range(dp)]
                dist.all_gather(rows, full.contiguous(), group=dp_group)
                full = torch.cat(rows)
            masks[name] = checksum(full != 0)
        return hook

    block.hidden_dropout.register_forward_hook(record("hidden"))
    block.out_dropout.register_forward_hook(record("out"))
    for step in range(first, first + args.steps):
        x = batch(step).chunk(dp)[dp_rank]
        if args.sp and world > 1:
            x = distribute_tensor(x, mesh["tp"], [Shard(1)])
        with global_batch(mesh, "dp") if world > 1 else contextlib.nullcontext():
            y = block(x)
        if isinstance(y, DTensor):
            y = y.full_tensor()
        loss = (y ** 2).mean()  # this rank's rows; FSDP averages the gradients over dp
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total, group=dp_group)
        if dist.get_rank() == 0:
            print(f"step={step} hidden_mask={masks['hidden']} out_mask={masks['out']} "
                  f"loss={total.item() / dp:.6f}", flush=True)
    if args.save:
        model_sd, optim_sd = get_state_dict(block, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd, "step": torch.tensor(first + args.steps)},
                 checkpoint_id=args.save)
    dist.barrier()  # every rank done with its groups before any tears them down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
