"""Activation memory of one training step: what dropout keeps for backward, torch against dropkit.

Two models, reduced in depth, on the CPU, one step each (forward, loss, backward, SGD):

- **BERT-base-shaped**: an embedding of 30522 tokens, ``nn.TransformerEncoder`` layers of width
  768, 12 heads, feed-forward 3072, dropout 0.1 (hidden and attention), GELU; batch 2 x 128 tokens.
- **ViT-S-shaped**: a 16 x 16 patch embedding of 224 x 224 images, a class token, pre-norm
  encoder layers of width 384, 6 heads, feed-forward 1536, dropout 0.1; batch 2 (197 tokens).

Variants: ``torch`` (as built) and ``dropkit`` (``dropkit.patch.patch(model, seed=0)``: the
dropout modules and the attention become dropkit's, default mask storage), each run in a fresh
process with the same weights and data. Printed per variant:

- **dropout saved**: the bytes of every tensor packed for backward while a dropout module's
  forward runs (``torch.autograd.graph.saved_tensors_hooks``; each storage counted once). torch's
  ``nn.Dropout`` keeps a bool mask (1 byte per element); dropkit's keeps 1 bit per element, or
  nothing for the layers that draw their mask again.
- **all saved**: the same over the whole forward (each storage counted once): the step's
  activation memory.
- **peak step RSS**: how far the process's resident memory rose during the step above what it
  held before it (``ru_maxrss``), with glibc told to return freed blocks of 64 KiB or more to
  the kernel at once so that resident memory follows the live tensors.

Run: ``python benchmarks/memory.py [--depth 2] [--batch 2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import platform
import resource
import subprocess
import sys

import torch
from torch import nn

MODELS = ("bert_base", "vit_s")
VARIANTS = ("torch", "dropkit")


# (vocabulary or image side, width, heads, feed-forward, tokens); "tiny" only for the tests
SHAPES = {"bert_base": (30522, 768, 12, 3072, 128), "vit_s": (224, 384, 6, 1536, 197),
          "bert_tiny": (1000, 64, 2, 256, 16), "vit_tiny": (32, 32, 2, 64, 5)}


class Bert(nn.Module):
    def __init__(self, depth: int, vocab: int, width: int, heads: int, ff: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, 512, width))
        self.drop = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(width, heads, ff, 0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.embed(ids) + self.pos[:, : ids.shape[1]])
        return self.head(self.encoder(h)[:, 0])


class ViT(nn.Module):
    def __init__(self, depth: int, side: int, width: int, heads: int, ff: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, (side // 16) ** 2 + 1, width))
        self.drop = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(width, heads, ff, 0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1) + self.pos
        return self.head(self.encoder(self.drop(h))[:, 0])


def build(name: str, depth: int, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model ``name`` with ``depth`` layers (seeded weights), its input and its labels."""
    first, width, heads, ff, tokens = SHAPES[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name.startswith("bert"):
        model: nn.Module = Bert(depth, first, width, heads, ff)
        x = torch.randint(0, first, (batch, tokens), generator=g)
        return model, x, torch.randint(0, 2, (batch,), generator=g)
    images = torch.randn(batch, 3, first, first, generator=g)
    return ViT(depth, first, width, heads, ff), images, torch.randint(0, 10, (batch,), generator=g)


def _is_dropout(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__module__.startswith("dropkit.") and "Dropout" in kind.__name__ or isinstance(
        module, nn.modules.dropout._DropoutNd)


def measure(name: str, variant: str, depth: int, batch: int) -> dict:
    """One training step of ``name`` as ``variant``: saved bytes (dropout's, all) and the peak RSS rise."""
    lib = ctypes.CDLL(ctypes.util.find_library("c")) if platform.system() == "Linux" else None
    if lib is not None:  # resident memory follows the live tensors
        lib.mallopt(-3, 64 << 10)  # M_MMAP_THRESHOLD
        lib.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    model, x, y = build(name, depth, batch)
    model.train()
    replaced = 0
    if variant == "dropkit":
        from dropkit.patch import patch

        replaced = len(patch(model, seed=0).replaced)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    inside = [0]

    def enter(*_: object) -> None:
        inside[0] += 1

    def leave(*_: object) -> None:
        inside[0] -= 1

    for m in model.modules():
        if _is_dropout(m):
            m.register_forward_pre_hook(enter)
            m.register_forward_hook(leave)
    seen: set[int] = set()
    totals = {"dropout": 0, "all": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and storage.nbytes():
            seen.add(key)
            totals["all"] += storage.nbytes()
            if inside[0]:
                totals["dropout"] += storage.nbytes()
        return t

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": name, "variant": variant, "depth": depth, "batch": batch, "replaced": replaced,
            "dropout_saved_bytes": totals["dropout"], "all_saved_bytes": totals["all"],
            "peak_rss_rise_bytes": (after - before) * 1024}


def _child(name: str, variant: str, depth: int, batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, variant, "--depth", str(depth), "--batch", str(batch)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=2, help="encoder layers (BERT-base and ViT-S have 12)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS), help=f"of {sorted(SHAPES)}")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*args.child, args.depth, args.batch)))
        return {}
    rows = [_child(m, v, args.depth, args.batch) for m in args.models.split(",") for v in VARIANTS]
    mib = 2.0**20
    print(f"one CPU training step, depth {args.depth}, batch {args.batch}, torch {torch.__version__}")
    print(f"{'model':<10} {'variant':<8} {'dropout saved MiB':>18} {'all saved MiB':>14} "
          f"{'peak step RSS MiB':>18}")
    for r in rows:
        print(f"{r['model']:<10} {r['variant']:<8} {r['dropout_saved_bytes'] / mib:>18.2f} "
              f"{r['all_saved_bytes'] / mib:>14.2f} {r['peak_rss_rise_bytes'] / mib:>18.1f}")
    for m in args.models.split(","):
        t, d = (next(r for r in rows if r["model"] == m and r["variant"] == v) for v in VARIANTS)
        print(f"{m}: dropout keeps {d['dropout_saved_bytes'] / mib:.2f} MiB instead of "
              f"{t['dropout_saved_bytes'] / mib:.2f} MiB; all saved "
              f"{d['all_saved_bytes'] / t['all_saved_bytes']:.2f}x, peak step RSS "
              f"{d['peak_rss_rise_bytes'] / max(t['peak_rss_rise_bytes'], 1):.2f}x")
    result = {"rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
