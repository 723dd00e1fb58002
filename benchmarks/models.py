"""Real models, one train step each: unpatched torch, ``patch(model, seed=0)``, and every rate at 0.

Each model is built once (``torch.manual_seed(0)``) and deep-copied into three variants with the
same initial weights: ``torch`` (as built, torch's dropout), ``dropkit`` (after
``dropkit.patch.patch(model, seed=0)``) and ``floor`` (the torch model with every dropout rate set
to 0, the cost of the same step without dropout). A step is forward, loss, backward and an
optimizer step (SGD for the CNNs, AdamW for the rest) on fixed input data. After warm-up steps the
three variants take turns (round-robin, the order rotating each round) so that drift on a shared
machine hits all of them alike, and the table reports the median time of a step with the ratios
``dropkit / torch`` and ``(dropkit - floor) / (torch - floor)``, the share of torch's dropout cost
that dropkit still pays. The second ratio is "n/a" when ``torch - floor`` is under 2% of torch's
time: the dropout cost is then within the noise of the measurement.

Per model it also prints how many dropout modules ``patch()`` replaced and what its report says it
could not replace. torch has no DropBlock: the ResNet-style CNN uses torchvision's
``drop_block2d`` formula written out below as a module, so that it runs where torchvision does
not import. ``patch()`` maps ``torchvision.ops.DropBlock2d`` itself, but not this stand-in, so the
dropkit variant replaces it explicitly with ``dropkit.DropBlock2d`` and the output says so.

Run: ``python benchmarks/models.py [--models mlp,bert_tiny] [--repeats R] [--quick] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit._select import rate_attr, set_rate
from dropkit.app.models import SimpleCNNWithDropout, SimpleModelWithDropout
from dropkit.ops import backend_name
from dropkit.patch import Unreplaced, patch
from dropkit.rng import derive_seed

VARIANTS = ("torch", "dropkit", "floor")
NOISE = 0.02  # torch - floor below this share of torch's time is reported as noise ("n/a")
SEED = 0


class SkipModel(Exception):
    """A model whose library cannot be imported here; the message says why."""


class TorchvisionDropBlock2d(nn.Module):
    """DropBlock as torchvision's ``drop_block2d`` computes it, for a model without torchvision.

    Seeds are Bernoulli(gamma) on the ``(H - b + 1, W - b + 1)`` positions where a whole block
    fits, with ``gamma = p H W / (b^2 (H - b + 1)(W - b + 1))``; each seed grows to a ``b x b``
    block by max-pooling, and the kept values are scaled by ``numel / (eps + kept)``. Only odd
    block sizes keep the shape (as in torchvision).
    """

    def __init__(self, p: float, block_size: int) -> None:
        super().__init__()
        if block_size % 2 == 0:
            raise ValueError(f"block_size must be odd, got {block_size}")
        self.p = p
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, c, h, w = x.shape
        b = min(self.block_size, h, w)
        gamma = self.p * h * w / (b * b * (h - b + 1) * (w - b + 1))
        seeds = torch.empty(n, c, h - b + 1, w - b + 1, dtype=x.dtype, device=x.device).bernoulli_(gamma)
        seeds = F.pad(seeds, [b // 2] * 4, value=0.0)
        keep = 1.0 - F.max_pool2d(seeds, kernel_size=b, stride=1, padding=b // 2)
        return x * keep * (keep.numel() / (1e-6 + keep.sum()))

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv + BN) with a dropout module on the residual branch."""

    def __init__(self, cin: int, cout: int, stride: int, drop: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = drop
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.drop(self.bn2(self.conv2(h)))
        return F.relu(h + self.shortcut(x))


def resnet_cnn() -> nn.Module:
    """Stem to 32x32, then stages of 32/64/128 channels at 32/16/8: Dropout2d, DropBlock 5, 3."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        BasicBlock(32, 32, 1, nn.Dropout2d(0.1)), BasicBlock(32, 32, 1, nn.Dropout2d(0.1)),
        BasicBlock(32, 64, 2, TorchvisionDropBlock2d(0.1, 5)),
        BasicBlock(64, 64, 1, TorchvisionDropBlock2d(0.1, 5)),
        BasicBlock(64, 128, 2, TorchvisionDropBlock2d(0.1, 3)),
        BasicBlock(128, 128, 1, TorchvisionDropBlock2d(0.1, 3)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Workload:
    """A model in train mode, the loss of one step on fixed data, and its optimizer's factory."""

    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    optimizer: OptimizerFactory
    description: str


def _sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def _adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4)


def _classify(
    model: nn.Module, x: torch.Tensor, classes: int, desc: str, optim: OptimizerFactory = _sgd
) -> Workload:
    """Cross-entropy on ``x`` against fixed random labels."""
    y = torch.randint(0, classes, (x.shape[0],))
    return Workload(model, lambda m: F.cross_entropy(m(x), y), optim, desc)


def _timm(name: str, **kwargs: object) -> nn.Module:
    try:
        import timm
    except Exception as exc:  # torchvision's import can fail with RuntimeError, not only ImportError
        raise SkipModel(f"timm does not import: {type(exc).__name__}: {exc}") from exc
    return timm.create_model(name, pretrained=False, num_classes=10, drop_path_rate=0.1, **kwargs)


def build_mlp() -> Workload:
    model = SimpleModelWithDropout(0.5, dropout=nn.Dropout)
    return _classify(model, torch.randn(32, 64), 10, "guide MLP 64-128-10, p 0.5, batch 32, SGD")


def build_cnn() -> Workload:
    model = SimpleCNNWithDropout(0.5, dropout=nn.Dropout)
    return _classify(model, torch.randn(32, 3, 64, 64), 10, "guide CNN, p 0.5, batch 32x3x64x64, SGD")


def build_encoder() -> Workload:
    layer = nn.TransformerEncoderLayer(256, 4, 1024, 0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    x, target = torch.randn(32, 128, 256), torch.randn(32, 128, 256)
    desc = "nn.TransformerEncoder 4x(d 256, 4 heads, ff 1024), dropout 0.1, batch 32, seq 128, AdamW"
    return Workload(model, lambda m: F.mse_loss(m(x), target), _adamw, desc)


def build_resnet() -> Workload:
    desc = "ResNet-style CNN, Dropout2d 0.1 + DropBlock 0.1 (block 5, 3), batch 32x3x64x64, SGD"
    return _classify(resnet_cnn(), torch.randn(32, 3, 64, 64), 10, desc)


def build_vit() -> Workload:
    model = _timm("vit_tiny_patch16_224", img_size=64)
    desc = "timm ViT-tiny/16, img 64, drop_path 0.1, batch 16, AdamW"
    return _classify(model, torch.randn(16, 3, 64, 64), 10, desc, _adamw)


def build_convnext() -> Workload:
    model = _timm("convnext_atto")
    desc = "timm ConvNeXt-atto, drop_path 0.1, img 64, batch 16, AdamW"
    return _classify(model, torch.randn(16, 3, 64, 64), 10, desc, _adamw)


def build_efficientnet() -> Workload:
    try:
        from torchvision.models import efficientnet_b0
    except Exception as exc:  # its C ops fail to register with a mismatched torch: RuntimeError
        raise SkipModel(f"torchvision does not import: {type(exc).__name__}: {exc}") from exc
    desc = "torchvision EfficientNet-B0 (dropout 0.2, stochastic depth 0.2), img 64, batch 16, SGD"
    return _classify(efficientnet_b0(num_classes=10), torch.randn(16, 3, 64, 64), 10, desc)


def build_bert() -> Workload:
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except Exception as exc:
        raise SkipModel(f"transformers does not import: {type(exc).__name__}: {exc}") from exc
    config = BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    ids, labels = torch.randint(0, config.vocab_size, (16, 128)), torch.randint(0, 2, (16,))
    desc = (f"HF BERT (hidden 128, 2 layers, 4 heads, ff 512, vocab {config.vocab_size}), dropout 0.1, "
            f"batch 16, seq 128, attention {config._attn_implementation}, AdamW")
    return Workload(model, lambda m: m(input_ids=ids, labels=labels).loss, _adamw, desc)


MODELS: dict[str, Callable[[], Workload]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "encoder": build_encoder,
    "resnet": build_resnet,
    "vit_tiny": build_vit,
    "convnext_atto": build_convnext,
    "efficientnet_b0": build_efficientnet,
    "bert_tiny": build_bert,
}


@dataclass
class Result:
    """One model's row: median ms per variant, or the reason it was skipped, and patch's report."""

    name: str
    description: str = ""
    ms: dict[str, float] = field(default_factory=dict)
    steps_per_sample: int = 1
    replaced: int = 0
    explicit: list[str] = field(default_factory=list)
    unreplaced: list[Unreplaced] = field(default_factory=list)
    zeroed: int = 0
    skipped: str = ""

    @property
    def ratio(self) -> float:
        """``dropkit / torch``: below 1 when the patched step is faster."""
        return self.ms["dropkit"] / self.ms["torch"]

    @property
    def share(self) -> float | None:
        """``(dropkit - floor) / (torch - floor)``, or None when torch - floor is within noise."""
        torch_cost = self.ms["torch"] - self.ms["floor"]
        if torch_cost < NOISE * self.ms["torch"]:
            return None
        return (self.ms["dropkit"] - self.ms["floor"]) / torch_cost


def replace_dropblocks(model: nn.Module, seed: int) -> list[str]:
    """Swap each TorchvisionDropBlock2d for dropkit.DropBlock2d on patch()'s per-layer stream."""
    names = [n for n, m in model.named_modules() if isinstance(m, TorchvisionDropBlock2d)]
    for name in names:
        old = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        new = dropkit.DropBlock2d(old.p, old.block_size, seed=derive_seed(seed, name)).train(old.training)
        setattr(model.get_submodule(parent), child, new)
    return names


def zero_rates(model: nn.Module) -> int:
    """Set every dropout rate of ``model`` to 0; returns how many sites were changed.

    That is the family modules dropkit knows (torch.nn's dropout classes, timm's DropPath,
    torchvision's StochasticDepth), the written-out DropBlock, and rates kept as float attributes
    whose name says dropout (``nn.MultiheadAttention.dropout``), which no module swap reaches.
    """
    count = 0
    for module in model.modules():
        if rate_attr(module) is not None:
            set_rate(module, 0.0)
            count += 1
        elif isinstance(module, TorchvisionDropBlock2d):
            module.p = 0.0
            count += 1
        for attr, value in vars(module).items():
            if "drop" in attr and not attr.startswith("_") and isinstance(value, float) and value > 0:
                setattr(module, attr, 0.0)
                count += 1
    return count


def measure(name: str, repeats: int, warmup: int, min_sample_s: float) -> Result:
    """Build ``name``'s three variants and time their train steps side by side."""
    torch.manual_seed(SEED)
    try:
        work = MODELS[name]()
    except SkipModel as exc:
        return Result(name, skipped=str(exc))
    base = work.model.train()
    result = Result(name, work.description)
    models = {v: copy.deepcopy(base) for v in VARIANTS}
    report = patch(models["dropkit"], seed=SEED)
    result.explicit = replace_dropblocks(models["dropkit"], SEED)
    result.replaced, result.unreplaced = len(report.replaced), report.unreplaced
    result.zeroed = zero_rates(models["floor"])
    optimizers = {v: work.optimizer(list(m.parameters())) for v, m in models.items()}

    def step(variant: str) -> None:
        optimizer = optimizers[variant]
        optimizer.zero_grad(set_to_none=True)
        work.loss(models[variant]).backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(warmup):
        for variant in VARIANTS:
            step(variant)
    # Steps per timed sample: enough that one sample lasts min_sample_s, the same for all variants.
    per_step = (time.perf_counter() - start) / (warmup * len(VARIANTS))
    k = max(1, round(min_sample_s / max(per_step, 1e-9)))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        for variant in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            start = time.perf_counter()
            for _ in range(k):
                step(variant)
            times[variant].append((time.perf_counter() - start) / k)
    result.ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    result.steps_per_sample = k
    return result


def machine() -> str:
    """CPU model, cores, torch threads, and the versions of python, torch, transformers, dropkit."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import transformers

        hf = transformers.__version__
    except Exception:
        hf = "not importable"
    backend = backend_name("cpu")
    return (f"{cpu}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}; python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {hf}, dropkit backend {backend}")


def _fmt_share(result: Result) -> str:
    share = result.share
    return "n/a" if share is None else f"{share:.2f}"


def _patch_notes(result: Result) -> list[str]:
    notes = []
    if result.explicit:
        notes.append(f"{len(result.explicit)} TorchvisionDropBlock2d not mapped by patch(), replaced "
                     f"explicitly with dropkit.DropBlock2d: {', '.join(result.explicit)}")
    grouped: dict[tuple[str, str], list[str]] = {}
    for u in result.unreplaced:
        grouped.setdefault((u.type, u.reason), []).append(u.name or "<root>")
    for (kind, reason), names in grouped.items():
        notes.append(f"not replaced: {len(names)}x {kind}: {reason}")
    return notes


def text_table(results: list[Result]) -> str:
    """The results as the fixed-width table the benchmark prints."""
    head = (f"{'model':<16}{'torch ms':>11}{'dropkit ms':>12}{'floor ms':>11}{'dk/torch':>10}"
            f"{'(dk-fl)/(t-fl)':>16}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.skipped:
            lines.append(f"{r.name:<16}skipped: {r.skipped}")
            continue
        lines.append(f"{r.name:<16}{r.ms['torch']:>11.4g}{r.ms['dropkit']:>12.4g}{r.ms['floor']:>11.4g}"
                     f"{r.ratio:>10.3f}{_fmt_share(r):>16}")
    return "\n".join(lines)


def details(results: list[Result]) -> list[str]:
    """One block per measured model: what it is and what patch() did to it."""
    lines = []
    for r in results:
        if r.skipped:
            continue
        lines.append(f"{r.name}: {r.description}; {r.steps_per_sample} step(s) per sample")
        lines.append(f"  patch(): replaced {r.replaced} module(s); floor: {r.zeroed} rate(s) set to 0")
        lines += [f"  {note}" for note in _patch_notes(r)]
    return lines


def markdown(results: list[Result], header: str) -> str:
    """The section docs/performance.md carries: machine, table, and what patch() replaced."""
    out = [
        header,
        "",
        "| model | torch ms | dropkit ms | floor ms | dropkit/torch | (dropkit − floor)/(torch − floor) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            out.append(f"| {r.name} | skipped: {r.skipped} | | | | |")
        else:
            out.append(f"| {r.name} | {r.ms['torch']:.4g} | {r.ms['dropkit']:.4g} | {r.ms['floor']:.4g} | "
                       f"{r.ratio:.3f} | {_fmt_share(r)} |")
    out += ["", f"n/a: torch − floor is under {NOISE:.0%} of torch's time, within noise.", ""]
    out += [f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in details(results)]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=11, help="timed samples per variant (default 11)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, short samples")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models must name some of {', '.join(MODELS)}, got {unknown or args.models}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected models and print (and optionally write) the table."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats, warmup, min_sample_s = (3, 1, 0.005) if args.quick else (args.repeats, 2, 0.05)
    results = []
    for name in args.models:
        results.append(measure(name, repeats, warmup, min_sample_s))
        print(f"{'skipped' if results[-1].skipped else 'measured'} {name}", file=sys.stderr, flush=True)
    header = f"machine: {machine()}\nrepeats {repeats}, warm-up {warmup}, medians of round-robin samples"
    print(header)
    print(text_table(results))
    print(f"n/a: torch - floor under {NOISE:.0%} of torch's time (within noise)")
    print("\n".join(details(results)))
    if args.markdown is not None:
        args.markdown.write_text(markdown(results, header.replace("\n", "; ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
