"""Every tensor-input dropout layer in the warm and cold regimes, at 1 and 2 threads, against torch.

Training does not run where a 64 MiB output is mapped anew on every call: activations of a few
MiB are served again by the allocator from memory it already holds, often from the last-level
cache. This benchmark measures both regimes, each in the same process and side by side:

- **warm**: inputs from 2**12 to 2**22 elements, glibc told to keep freed memory
  (``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``), so that every
  output is served from memory the process already touched, as in a training loop. Without the
  pin, glibc's dynamic threshold decides per call whether a freed block goes back to the kernel,
  and the next allocation of that size pays its page faults again: that, not the layers, is what
  makes one-thread timings of a few MiB jump between runs.
- **cold**: one large input (2**24 elements by default) with glibc told to map every block of
  128 KiB or more anew (``M_MMAP_THRESHOLD`` = 128 KiB, ``M_TRIM_THRESHOLD`` = 0), so that each
  output pays its page faults: the regime of the project's older figures.

Each case times three callables in turns (round-robin, the order rotating each round): the
dropkit layer (seeded, as ``patch(model, seed=0)`` makes it), its torch/timm/torchvision formula,
and the copy floor of the same regime (``x.clone()`` forward; ``x.clone()`` and ``g.clone()`` for
forward + backward, the least memory traffic a forward and a backward that each write one tensor
can make). The ratios ``dropkit / formula`` and ``dropkit / floor`` are computed per round and
reported as median [first quartile, third quartile] across the rounds.

Members: Dropout, AlphaDropout, FeatureAlphaDropout, GaussianDropout, GaussianNoise, DropPath,
StochasticDepth, Dropout1d/2d/3d, LockedDropout, DropBlock2d/3d. The layers that wrap another
module (DropConnect, WeightDrop, EmbeddingDropout, ConcreteDropout, MultiheadAttention) are timed
inside models by benchmarks/models.py and benchmarks/attention.py.

Run: ``python benchmarks/regimes.py [--quick] [--threads 1,2] [--sizes 12,16,20,22]
[--members DropPath,Dropout] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit.ops import backend_name

P = 0.1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return None
    lib = ctypes.CDLL(name)
    return lib if hasattr(lib, "mallopt") else None


def set_regime(regime: str) -> bool:
    """Tell glibc how to treat freed memory for ``regime``; False where there is no glibc."""
    lib = _libc()
    if lib is None:
        return False
    if regime == "warm":
        return bool(lib.mallopt(M_MMAP_THRESHOLD, 32 << 20) and lib.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    return bool(lib.mallopt(M_MMAP_THRESHOLD, 128 << 10) and lib.mallopt(M_TRIM_THRESHOLD, 0))


# ---- the torch/timm/torchvision formulas the layers replace ----


def timm_drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def drop_block_formula(x: torch.Tensor, p: float, block: int) -> torch.Tensor:
    """torchvision.ops.drop_block2d / drop_block3d written out (torchvision may not import)."""
    spatial = x.shape[2:]
    valid = [s - block + 1 for s in spatial]
    gamma = p * math.prod(spatial) / (block ** len(spatial) * math.prod(valid))
    noise = torch.empty((*x.shape[:2], *valid), dtype=x.dtype).bernoulli_(gamma)
    noise = F.pad(noise, [block // 2] * (2 * len(spatial)), value=0)
    pool = F.max_pool2d if len(spatial) == 2 else F.max_pool3d
    noise = 1 - pool(noise, stride=1, kernel_size=block, padding=block // 2)
    return x * noise * (noise.numel() / (1e-6 + noise.sum()))


def locked_formula(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * (x.new_empty((1, *x.shape[1:])).bernoulli_(1 - p) / (1 - p))


def gaussian_formula(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * (1 + math.sqrt(p / (1 - p)) * torch.randn_like(x))


@dataclass(frozen=True)
class Member:
    name: str
    layer: Callable[[], nn.Module]
    formula: Callable[[torch.Tensor], torch.Tensor]
    formula_name: str
    shape: Callable[[int], tuple[int, ...]]  # input shape of about n elements


def _rows(n: int, inner: tuple[int, ...]) -> tuple[int, ...]:
    return (max(1, n // math.prod(inner)), *inner)


MEMBERS = [
    Member("Dropout", lambda: dropkit.Dropout(P, seed=0), nn.Dropout(P), "torch.nn.Dropout",
           lambda n: _rows(n, (1024,))),
    Member("AlphaDropout", lambda: dropkit.AlphaDropout(P, seed=0), nn.AlphaDropout(P),
           "torch.nn.AlphaDropout", lambda n: _rows(n, (1024,))),
    Member("FeatureAlphaDropout", lambda: dropkit.FeatureAlphaDropout(P, seed=0), nn.FeatureAlphaDropout(P),
           "torch.nn.FeatureAlphaDropout", lambda n: _rows(n, (32, 32))),
    Member("GaussianDropout", lambda: dropkit.GaussianDropout(P, seed=0), lambda x: gaussian_formula(x, P),
           "x * (1 + sqrt(p / (1 - p)) * randn)", lambda n: _rows(n, (1024,))),
    Member("GaussianNoise", lambda: dropkit.GaussianNoise(0.1, seed=0),
           lambda x: x + 0.1 * torch.randn_like(x), "x + 0.1 * randn", lambda n: _rows(n, (1024,))),
    Member("DropPath", lambda: dropkit.DropPath(P, seed=0), lambda x: timm_drop_path(x, P),
           "timm drop_path", lambda n: _rows(n, (16, 64))),
    Member("StochasticDepth", lambda: dropkit.StochasticDepth(P, "row", seed=0),
           lambda x: timm_drop_path(x, P), "torchvision stochastic_depth (row)",
           lambda n: _rows(n, (4, 16, 16))),
    Member("Dropout1d", lambda: dropkit.Dropout1d(P, seed=0), nn.Dropout1d(P), "torch.nn.Dropout1d",
           lambda n: _rows(n, (32, 32))),
    Member("Dropout2d", lambda: dropkit.Dropout2d(P, seed=0), nn.Dropout2d(P), "torch.nn.Dropout2d",
           lambda n: _rows(n, (4, 16, 16))),
    Member("Dropout3d", lambda: dropkit.Dropout3d(P, seed=0), nn.Dropout3d(P), "torch.nn.Dropout3d",
           lambda n: _rows(n, (2, 8, 8, 8))),
    Member("LockedDropout", lambda: dropkit.LockedDropout(P, seed=0), lambda x: locked_formula(x, P),
           "bernoulli (1, N, C) mask * x", lambda n: (16, *_rows(n // 16, (64,)))),
    Member("DropBlock2d", lambda: dropkit.DropBlock2d(P, 3, seed=0), lambda x: drop_block_formula(x, P, 3),
           "torchvision drop_block2d formula", lambda n: _rows(n, (4, 16, 16))),
    Member("DropBlock3d", lambda: dropkit.DropBlock3d(P, 3, seed=0), lambda x: drop_block_formula(x, P, 3),
           "torchvision drop_block3d formula", lambda n: _rows(n, (2, 8, 8, 8))),
]


def _fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        xr = x.detach().requires_grad_()
        fn(xr).backward(g)

    return run


def _forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn(x)

    return run


def round_robin(cases: dict[str, Callable[[], None]], rounds: int, inner: int) -> dict[str, list[float]]:
    """Seconds per call of each case in each round; the cases take turns, the order rotating."""
    names = list(cases)
    for fn in cases.values():  # warm-up: caches, the allocator's free lists, layer state
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = cases[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median and quartiles of ``values``."""
    if len(values) == 1:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q1": q1, "q3": q3}


def ratios(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """``num / den`` per round, summarized by :func:`spread`."""
    return spread([a / b for a, b in zip(times[num], times[den], strict=True)])


def measure(member: Member, regime: str, n: int, mode: str, rounds: int, budget_s: float) -> dict:
    shape = member.shape(n)
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    layer, formula = member.layer().train(), member.formula
    if mode == "fwd":
        cases = {"dropkit": _forward(layer, x), "torch": _forward(formula, x),
                 "clone": _forward(torch.clone, x)}
    else:
        cases = {"dropkit": _fwd_bwd(layer, x, g), "torch": _fwd_bwd(formula, x, g),
                 "clone": lambda: (x.clone(), g.clone())}
    t0 = time.perf_counter()
    cases["torch"]()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, min(200, int(budget_s / (3 * rounds * once))))
    times = round_robin(cases, rounds, inner)
    return {
        "member": member.name, "formula": member.formula_name, "regime": regime,
        "threads": torch.get_num_threads(), "numel": math.prod(shape), "shape": list(shape), "mode": mode,
        "inner": inner, "times_s": times,
        "median_us": {k: statistics.median(v) * 1e6 for k, v in times.items()},
        "ratio_torch": ratios(times, "dropkit", "torch"), "ratio_clone": ratios(times, "dropkit", "clone"),
        "torch_over_clone": ratios(times, "torch", "clone"),
    }


def _fmt(r: dict[str, float]) -> str:
    return f"{r['median']:5.2f} [{r['q1']:.2f}, {r['q3']:.2f}]"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="warm 2**16, cold 2**20, 5 rounds")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--sizes", default=None, help="warm sizes as powers of two (default 12,14,16,18,20,22)")
    ap.add_argument("--cold-size", type=int, default=None, help="cold size as a power of two (default 24)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--members", default=None, help="comma-separated member names (default: all)")
    ap.add_argument("--regimes", default="warm,cold")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--budget", type=float, default=None, help="seconds per case (default 0.6, quick 0.05)")
    ap.add_argument("--json", default=None, help="write the rows and their times to this file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("16" if args.quick else "12,14,16,18,20,22")).split(",")]
    cold = args.cold_size if args.cold_size is not None else (20 if args.quick else 24)
    rounds = args.rounds or (5 if args.quick else 15)
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 0.6)
    members = MEMBERS
    if args.members:
        wanted = args.members.split(",")
        unknown = sorted(set(wanted) - {m.name for m in MEMBERS})
        if unknown:
            raise SystemExit(f"unknown members {unknown}; known: {[m.name for m in MEMBERS]}")
        members = [m for m in MEMBERS if m.name in wanted]
    threads = [int(t) for t in args.threads.split(",")]
    regimes = args.regimes.split(",")
    modes = args.modes.split(",")
    previous_threads = torch.get_num_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {"torch": torch.__version__, "backend": backend_name("cpu"), "cpus": os.cpu_count(),
            "load_average": load, "p": P, "rounds": rounds, "sizes_log2": sizes, "cold_log2": cold,
            "quick": args.quick}
    print(f"torch {torch.__version__}, backend {backend_name('cpu')}, {os.cpu_count()} CPUs, load {load}, "
          f"p = {P}, {rounds} rounds; ratios: median [q1, q3] across rounds")
    print(f"{'member':<20} {'regime':<5} {'thr':>3} {'numel':>9} {'mode':<8} {'dropkit us':>10} "
          f"{'torch us':>9} {'clone us':>9}  {'dk/torch':<19} {'dk/clone':<19} torch/clone")
    rows = []
    try:
        for regime in regimes:
            pinned = set_regime(regime)
            meta[f"{regime}_allocator_pinned"] = pinned
            for nt in threads:
                torch.set_num_threads(nt)
                for member in members:
                    for k in (sizes if regime == "warm" else [cold]):
                        for mode in modes:
                            row = measure(member, regime, 2**k, mode, rounds, budget)
                            rows.append(row)
                            med = row["median_us"]
                            print(f"{member.name:<20} {regime:<5} {nt:>3} {row['numel']:>9} {mode:<8} "
                                  f"{med['dropkit']:>10.1f} {med['torch']:>9.1f} {med['clone']:>9.1f}  "
                                  f"{_fmt(row['ratio_torch'])} {_fmt(row['ratio_clone'])} "
                                  f"{_fmt(row['torch_over_clone'])}", flush=True)
    finally:
        torch.set_num_threads(previous_threads)
        set_regime("warm")
    result = {"meta": meta, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
