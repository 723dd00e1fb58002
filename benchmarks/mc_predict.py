"""MC dropout prediction, T = 30 passes over 1000 inputs of the guide's MLP: batched vs loops.

Compares, in one process on the same weights and inputs:
  * dropkit batched: ``mc_predict(model, x, 30)`` (one pass over 30 000 replicated rows), and
    the same in chunks of 4096 rows (activations that stay in cache);
  * dropkit loop:    ``mc_predict(model, x, 30, batched=False)``;
  * torch loop:      the usual hand-written loop of 30 passes with torch.nn.Dropout switched on;
  * torch batched:   ``mc_predict`` on the torch.nn.Dropout model (for reference).
and prints the median time of each (the cases take turns) and the ratios to the torch loop.

Run: ``python benchmarks/mc_predict.py [--reps 7] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dropkit.app.models import SimpleModelWithDropout
from dropkit.ops import backend_name
from dropkit.uncertainty import mc_dropout, mc_predict

SAMPLES, N = 30, 1000


def median_ms(cases: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median milliseconds per case; the cases take turns so that load changes hit them alike."""
    for fn in cases.values():
        fn()  # warm-up: thread pools, allocator, first-call kernel loading
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def torch_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), mc_dropout(model):
        return torch.stack([model(x) for _ in range(SAMPLES)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = SimpleModelWithDropout(dropout_prob=0.5).eval()
    theirs = SimpleModelWithDropout(dropout_prob=0.5, dropout=nn.Dropout).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(N, 64)
    cases = {
        "dropkit batched": lambda: mc_predict(ours, x, SAMPLES),
        "dropkit batched, max_batch=4096": lambda: mc_predict(ours, x, SAMPLES, max_batch=4096),
        "dropkit loop": lambda: mc_predict(ours, x, SAMPLES, batched=False),
        "torch.nn loop": lambda: torch_loop(theirs, x),
        "torch.nn batched": lambda: mc_predict(theirs, x, SAMPLES),
    }
    times = median_ms(cases, args.reps)
    base = times["torch.nn loop"]
    print(f"mc_predict T={SAMPLES}, N={N}, SimpleModelWithDropout(64-128-10, p=0.5)")
    threads = torch.get_num_threads()
    print(f"dropkit CPU backend: {backend_name('cpu')}, torch threads: {threads}, reps: {args.reps}")
    print(f"{'case':<34}{'median ms':>12}{'speed-up vs torch loop':>26}")
    for name, ms in times.items():
        print(f"{name:<34}{ms:>12.2f}{base / ms:>25.2f}x")


if __name__ == "__main__":
    main()
