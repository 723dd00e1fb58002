"""A transformer MLP block trained with DTensor tensor parallelism: every dropout mask is the
one a single process draws, whatever the tensor-parallel degree (CPU, gloo).

    python examples/dtensor_tp.py                                          # TP = 1
    python -m torch.distributed.run --nproc_per_node 2 examples/dtensor_tp.py
    python -m torch.distributed.run --nproc_per_node 4 examples/dtensor_tp.py

The block ``x + Dropout(W2 Dropout(GELU(W1 LayerNorm(x))))`` is split with
``parallelize_module``: W1 by columns (its output, the hidden activation, is a DTensor sharded
on its last dim) and W2 by rows (its output is a replicated DTensor). Both layers keep DTensor
outputs (``use_local_output=False``), so dropkit's dropout sees the global shape and each rank
applies its block of the one-process mask. Rank 0 prints, per step, a checksum of each
dropout's global mask and the loss; the lines agree across TP degrees (the losses up to the
order of the sums in the row-parallel reduction).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import dropkit


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
        out = self.out_dropout(self.w2(h))  # a replicated DTensor: the whole output on each rank
        return x + (out.to_local() if isinstance(out, DTensor) else out)


def checksum(mask: torch.Tensor) -> int:
    """Sum of (index + 1) over the kept elements of a global mask: equal masks, equal sums."""
    flat = mask.reshape(-1)
    return int(((torch.arange(flat.numel()) + 1) * flat).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if "RANK" not in os.environ:  # one process: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    torch.manual_seed(0)
    block = Block(8, 16, 0.25)
    parallelize_module(block, mesh, {
        "w1": ColwiseParallel(use_local_output=False),
        "w2": RowwiseParallel(use_local_output=False),
    })
    masks: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output):
            full = output.full_tensor() if isinstance(output, DTensor) else output
            masks[name] = checksum(full != 0)
        return hook

    block.hidden_dropout.register_forward_hook(record("hidden"))
    block.out_dropout.register_forward_hook(record("out"))
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        x = torch.randn(4, 5, 8, generator=data)
        y = block(x)
        loss = (y ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if dist.get_rank() == 0:
            print(f"tp={world} step={step} hidden_mask={masks['hidden']} out_mask={masks['out']} "
                  f"loss={loss.item():.6f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
