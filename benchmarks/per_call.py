"""What one dropout call costs beyond its kernel: Python calls, small tensors, a small training step.

Three measurements, each side by side in one process:

1. **Python calls per forward** of a seeded ``dropkit.Dropout`` on a (32, 128) input that
   requires grad, counted twice: Python function calls seen by ``sys.setprofile`` (the frames the
   interpreter enters), and every call cProfile records (C functions included). torch.nn.Dropout
   is counted the same way for scale.
2. **(32, 128) float32 forward + backward**, dropkit.Dropout (bits and seed storage) against
   torch.nn.Dropout, p = 0.1: median microseconds and the ratio.
3. **A small regression net's training step** (Dropout -> Linear(13, 50) -> ReLU -> Dropout ->
   Linear(50, 1), batch 32, Adam, MSE): dropkit.Dropout against torch.nn.Dropout, same weights.

The cases take turns, so drift on a busy machine hits them alike; medians are reported.

Run: ``python benchmarks/per_call.py [--reps R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import dropkit


def python_calls(fn: Callable[[], object]) -> tuple[int, int]:
    """(Python function calls, all profiled calls) made by one ``fn()``."""
    count = 0

    def hook(frame, event, arg):  # noqa: ARG001 - sys.setprofile's signature
        nonlocal count
        if event == "call":
            count += 1

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    profile = cProfile.Profile()
    profile.runcall(fn)
    return count, pstats.Stats(profile).total_calls  # type: ignore[attr-defined]


def _interleaved(cases: dict[str, Callable[[], object]], reps: int, inner: int) -> dict[str, float]:
    """Median microseconds per call of each case, the cases taking turns ``reps`` times."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(inner):
            fn()
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def small_tensor(reps: int) -> dict[str, float]:
    """fwd+bwd of a (32, 128) float32 tensor through each dropout, p = 0.1."""
    x = torch.randn(32, 128, requires_grad=True)
    grad = torch.ones(32, 128)
    layers = {
        "torch.nn.Dropout": nn.Dropout(0.1),
        "dropkit bits": dropkit.Dropout(0.1, seed=0),
        "dropkit seed": dropkit.Dropout(0.1, seed=0, mask_storage="seed"),
    }

    def step(layer: nn.Module) -> Callable[[], None]:
        return lambda: layer(x).backward(grad)

    return _interleaved({name: step(layer) for name, layer in layers.items()}, reps, 200)


class RegressionNet(nn.Module):
    """Dropout -> Linear(13, 50) -> ReLU -> Dropout -> Linear(50, 1)."""

    def __init__(self, drop: Callable[[float], nn.Module]) -> None:
        super().__init__()
        self.net = nn.Sequential(drop(0.1), nn.Linear(13, 50), nn.ReLU(), drop(0.2), nn.Linear(50, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def training_step(reps: int) -> dict[str, float]:
    """One Adam step of the small regression net, torch vs dropkit dropout, same weights."""
    torch.manual_seed(0)
    base = RegressionNet(nn.Dropout)
    kit = RegressionNet(lambda p: dropkit.Dropout(p, seed=0))
    kit.load_state_dict(base.state_dict(), strict=False)
    x, y = torch.randn(32, 13), torch.randn(32, 1)

    def step(model: nn.Module) -> Callable[[], None]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

        return run

    cases = {"torch.nn.Dropout": step(base), "dropkit.Dropout": step(copy.deepcopy(kit))}
    return _interleaved(cases, reps, 50)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed rounds per case (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"backend {dropkit.ops.backend_name('cpu')}")

    x = torch.randn(32, 128, requires_grad=True)
    seeded, plain = dropkit.Dropout(0.1, seed=0), nn.Dropout(0.1)
    seeded(x), plain(x)  # warm caches
    kit_py, kit_all = python_calls(lambda: seeded(x))
    torch_py, torch_all = python_calls(lambda: plain(x))
    print("\nCalls per forward, (32, 128) input requiring grad:")
    print(f"  {'':<24}{'Python calls':>14}{'all (cProfile)':>16}")
    print(f"  {'dropkit.Dropout(seed=0)':<24}{kit_py:>14}{kit_all:>16}")
    print(f"  {'torch.nn.Dropout':<24}{torch_py:>14}{torch_all:>16}")

    small = small_tensor(args.reps)
    base = small["torch.nn.Dropout"]
    print("\n(32, 128) float32 forward + backward, p = 0.1 (median us):")
    for name, us in small.items():
        print(f"  {name:<20}{us:>9.1f}   {us / base:.2f}x torch")

    step = training_step(args.reps)
    base = step["torch.nn.Dropout"]
    print("\nRegression net training step (batch 32, Adam; median us):")
    for name, us in step.items():
        print(f"  {name:<20}{us:>9.1f}   {us / base:.2f}x torch")


if __name__ == "__main__":
    main()
