"""Data-parallel training of the guide's MLP with dropkit dropout, reproducible bit for bit.

Every rank gets its own dropout stream from one base seed (dropkit.distributed.seed_streams),
and every dropout layer its own stream within it (seed_model). Run on CPU with gloo:

    python -m torch.distributed.run --nproc_per_node 2 examples/ddp_train.py --out run.pt

Rank 0 writes the final parameters, the loss curve, and each rank's dropout stream and its
dropout layer's input and output in the first step to --out. Running the command twice gives
the same parameters and losses, bit for bit.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dropkit.app.models import SimpleModelWithDropout
from dropkit.distributed import seed_model, seed_streams


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 10-class problem on 64 features, labelled by a fixed random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(64, 10, generator=g)
    x = torch.randn(n, 64, generator=g)
    return x, (x @ teacher).argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--out", default=None, help="where rank 0 saves results (torch.save)")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # one thread per rank: ranks share the machine's cores
    torch.manual_seed(args.seed)  # same initial weights on every rank

    model = SimpleModelWithDropout(dropout_prob=args.p)
    streams = seed_streams(args.seed)  # distinct stream per data-parallel rank
    seed_model(model, streams)  # before DDP wraps the model; DDP is told to keep each rank's seeds
    first: dict[str, torch.Tensor] = {}  # what the dropout layer saw and gave in step 0

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not first:
            first.update(input=inputs[0].detach(), output=output.detach())

    model.dropout.register_forward_hook(record)

    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    x, y = make_data(args.batch * world * args.steps, args.seed)
    losses = []
    for step in range(args.steps):
        start = (step * world + rank) * args.batch  # each rank reads its own slice
        xb, yb = x[start : start + args.batch], y[start : start + args.batch]
        loss = torch.nn.functional.cross_entropy(ddp(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)

    seen = [None] * world
    state = {"stream": model.dropout.stream_state(), **first}
    dist.all_gather_object(seen, state)
    if rank == 0:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {args.steps} steps on {world} ranks")
        if args.out:
            params = {k: v.detach().clone() for k, v in model.state_dict().items()}
            results = {"params": params, "losses": losses, "first_step": seen, "streams": asdict(streams)}
            torch.save(results, args.out)
    dist.barrier()  # every rank done with its groups before any tears them down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
