"""What dropout costs in a transformer encoder: dropkit.Dropout vs torch.nn.Dropout, p = 0.1 vs 0.

An encoder written with explicit dropout modules (on the attention probabilities, after the
attention projection, after the feed-forward activation and after the feed-forward output),
d_model 256, 4 heads, feed-forward 1024, 4 layers, batch 32, sequence 128, in train mode with
autograd on. It times the forward pass of four models with the same weights (dropkit and torch
dropout, each at p = 0.1 and p = 0), the cases taking turns, and prints the medians and the two
ratios time(p = 0.1) / time(p = 0).

Run: ``python benchmarks/transformer_block.py [--quick] [--reps R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import dropkit
from dropkit.ops import backend_name

D_MODEL, HEADS, FF, LAYERS, BATCH, SEQ = 256, 4, 1024, 4, 32, 128


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention and a GELU feed-forward, four dropout sites."""

    def __init__(self, drop: Callable[[float], nn.Module], p: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ff1, self.ff2 = nn.Linear(D_MODEL, FF), nn.Linear(FF, D_MODEL)
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.attn_drop, self.proj_drop, self.ff_drop, self.out_drop = (drop(p) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, HEADS, D_MODEL // HEADS).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D_MODEL // HEADS), dim=-1)
        ctx = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(n, t, D_MODEL)
        x = self.norm1(x + self.proj_drop(self.proj(ctx)))
        h = self.ff_drop(nn.functional.gelu(self.ff1(x)))
        return self.norm2(x + self.out_drop(self.ff2(h)))


def encoder(drop: Callable[[float], nn.Module], p: float) -> nn.Module:
    return nn.Sequential(*(EncoderLayer(drop, p) for _ in range(LAYERS))).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (3)")
    parser.add_argument("--reps", type=int, default=7, help="timed forwards per model")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    if reps < 1:
        parser.error(f"--reps must be >= 1, got {reps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = encoder(nn.Dropout, 0.1)
    models = {}
    for name, drop in [("dropkit", dropkit.Dropout), ("torch", nn.Dropout)]:
        for p in (0.1, 0.0):
            model = encoder(drop, p)
            model.load_state_dict(copy.deepcopy(base.state_dict()), strict=False)
            models[(name, p)] = model
    x = torch.randn(BATCH, SEQ, D_MODEL, requires_grad=True)
    for model in models.values():  # warm-up
        model(x)
    times: dict[tuple[str, float], list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for key, model in models.items():
            start = time.perf_counter()
            model(x)
            times[key].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"encoder {LAYERS}x(d={D_MODEL}, heads={HEADS}, ff={FF}), batch {BATCH}, seq {SEQ}, train mode; "
          f"backend={backend_name('cpu')} threads={torch.get_num_threads()} reps={reps}")
    for name in ("dropkit", "torch"):
        print(f"{name:<8} forward p=0.1 {ms[(name, 0.1)]:8.1f} ms   p=0 {ms[(name, 0.0)]:8.1f} ms   "
              f"ratio {ms[(name, 0.1)] / ms[(name, 0.0)]:.2f}x")


if __name__ == "__main__":
    main()
