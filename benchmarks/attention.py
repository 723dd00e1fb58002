"""Attention with dropout on the CPU: dropkit's scaled_dot_product_attention vs torch's.

Shapes of a small BERT / ViT: batch 16, 4 heads, L = S = 128, head dim 32, dropout_p = 0.1, in
fp32 and bf16. Each case times forward+backward (and forward alone) of dropkit's function and of
``torch.nn.functional.scaled_dot_product_attention`` with the same ``dropout_p``, taking turns
in one process, and prints the medians side by side with the ratio dropkit / torch, plus the
bytes autograd saves for backward per attention probability (beyond q, k, v).

Run: ``python benchmarks/attention.py [--reps R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dropkit.functional import scaled_dot_product_attention
from dropkit.ops import backend_name

BATCH, HEADS, LENGTH, HEAD_DIM, P = 16, 4, 128, 32, 0.1


def saved_bytes(fn: Callable[[], torch.Tensor], skip: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward while ``fn`` runs, each storage once, inputs excluded."""
    seen = {t.untyped_storage().data_ptr() for t in skip}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def timed(fn: Callable[[], object], log: list[float]) -> None:
    start = time.perf_counter()
    fn()
    log.append((time.perf_counter() - start) * 1e3)


def run_case(dtype: torch.dtype, reps: int) -> None:
    """Time torch and dropkit taking turns; print medians, ratios and saved bytes."""
    torch.manual_seed(0)
    shape = (BATCH, HEADS, LENGTH, HEAD_DIM)
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=dtype)
    step = [0]

    def ours() -> torch.Tensor:
        step[0] += 1
        return scaled_dot_product_attention(q, k, v, dropout_p=P, seed=1, offset=step[0] * 2**20)

    def theirs() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=P)

    cases = {"torch": theirs, "dropkit": ours}
    times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in cases for m in ("fwd", "fwd+bwd")}
    for fn in cases.values():  # warm-up
        fn().backward(grad)
    for _ in range(reps):
        for name, fn in cases.items():
            with torch.no_grad():
                timed(fn, times[(name, "fwd")])
            timed(lambda fn=fn: fn().backward(grad), times[(name, "fwd+bwd")])
    for mode in ("fwd", "fwd+bwd"):
        t, d = (statistics.median(times[(n, mode)]) for n in ("torch", "dropkit"))
        print(f"{str(dtype).removeprefix('torch.'):<9}{mode:<10}{t:>10.2f}{d:>12.2f}{d / t:>7.2f}x")
    probs = BATCH * HEADS * LENGTH * LENGTH
    for name, fn in cases.items():
        per = saved_bytes(fn, [q, k, v]) / probs
        print(f"{'':<9}saved for backward, {name}: {per:.3f} bytes per probability")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"attention B={BATCH} H={HEADS} L=S={LENGTH} E={HEAD_DIM} dropout_p={P}; "
          f"backend={backend_name('cpu')} threads={torch.get_num_threads()} reps={args.reps}")
    print(f"{'dtype':<9}{'pass':<10}{'torch ms':>10}{'dropkit ms':>12}{'ratio':>8}")
    for dtype in (torch.float32, torch.bfloat16):
        run_case(dtype, args.reps)

if __name__ == "__main__":
    main()
