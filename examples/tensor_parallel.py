"""Tensor-parallel MLP with dropkit dropout: sharded activations get distinct masks per rank,
replicated activations the same mask on every rank (Megatron-LM's split, on CPU with gloo).

    python -m torch.distributed.run --nproc_per_node 2 examples/tensor_parallel.py --out tp.pt

The MLP ``x -> fc1 -> ReLU -> dropout -> fc2 -> dropout`` is split Megatron-style: fc1 by
columns (each rank computes its own slice of the hidden units, a *sharded* activation) and fc2
by rows (partial products summed with all_reduce, so its output is *replicated*). The hidden
dropout uses ``sharded_seed``: each slice needs its own mask. The output dropout uses
``replicated_seed``: every rank holds the same tensor and must drop the same elements, or the
copies diverge. Rank 0 prints whether the outputs agree and saves every rank's tensors to --out.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn

from dropkit.distributed import seed_model, seed_streams
from dropkit.layers import Dropout


class ShardedMLP(nn.Module):
    """This rank's share of ``Linear(d, h) -> ReLU -> Dropout -> Linear(h, d) -> Dropout``."""

    def __init__(self, d: int, hidden: int, p: float, tp_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden // tp_size)  # column shard: hidden units split by rank
        self.hidden_dropout = Dropout(p)
        self.fc2 = nn.Linear(hidden // tp_size, d, bias=False)  # row shard: partial sums
        self.out_dropout = Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden_dropout(torch.relu(self.fc1(x)))
        y = self.fc2(h)
        dist.all_reduce(y)  # every rank now holds the full, replicated output
        return self.out_dropout(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tp_group = dist.new_group(list(range(world)))  # all ranks form one tensor-parallel group
    torch.manual_seed(args.seed + rank)  # each rank initialises its own weight shard

    model = ShardedMLP(d=16, hidden=32, p=0.5, tp_size=world)
    streams = seed_streams(args.seed, data_parallel_group=0, tensor_parallel_group=tp_group)
    seed_model(model, streams, sharded=["hidden_dropout"])

    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(args.seed))  # same batch on all
    seen: dict[str, torch.Tensor] = {}
    model.hidden_dropout.register_forward_hook(lambda m, i, o: seen.update(hidden_in=i[0], hidden_out=o))
    seen["out"] = model(x)

    gathered = {}
    for key, value in seen.items():
        gathered[key] = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(gathered[key], value.detach().contiguous(), group=tp_group)
    if rank == 0:
        same = all(torch.equal(gathered["out"][0], other) for other in gathered["out"][1:])
        print(f"replicated output identical on all {world} ranks: {same}")
        if args.out:
            torch.save(gathered, args.out)
    dist.barrier()  # every rank done with its groups before any tears them down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
