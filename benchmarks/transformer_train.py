"""One train step (forward + backward) of real transformers: torch / patched dropkit / rates 0.

* nn.TransformerEncoder: 4 layers, d_model 256, 4 heads, feed-forward 1024, dropout 0.1,
  batch 32, sequence 128 (batch first).
* a tiny Hugging Face BERT (when transformers is installed): hidden 128, 2 layers, 4 heads,
  batch 16, sequence 128, hidden and attention dropout 0.1, "sdpa" attention.

Each model runs as torch built it, patched with ``dropkit.patch.patch(model, seed=0)`` (every
dropout, attention dropout included, on dropkit's stream), and with every rate set to 0 (the
floor: what the step costs without dropout). The three take turns in one process; the script
prints the medians, the ratio patched / torch and each one's overhead over the floor.

Run: ``python benchmarks/transformer_train.py [--reps R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dropkit.ops import backend_name
from dropkit.patch import patch


def zero_rates(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every dropout rate 0 (modules, MHA floats, HF config rates)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def encoder() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    x = torch.randn(32, 128, 256)
    return model, lambda m: m(x)


def bert() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]] | None:
    try:
        import transformers
    except ImportError:
        return None
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        attn_implementation="sdpa",
    )
    model = transformers.BertModel(config)
    ids = torch.randint(0, 1000, (16, 128))
    return model, lambda m: m(input_ids=ids).last_hidden_state


def run(name: str, model: nn.Module, call: Callable[[nn.Module], torch.Tensor], reps: int) -> None:
    torch.manual_seed(0)
    patched = copy.deepcopy(model)
    patch(patched, seed=0)
    cases = {"torch": model.train(), "dropkit": patched.train(), "floor": zero_rates(model).train()}

    def step(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        call(m).float().square().mean().backward()

    for m in cases.values():  # warm-up
        step(m)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for key, m in cases.items():
            start = time.perf_counter()
            step(m)
            times[key].append((time.perf_counter() - start) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    floor = ms["floor"]
    ratio = ms["dropkit"] / ms["torch"]
    print(f"{name:<22}{ms['torch']:>10.1f}{ms['dropkit']:>10.1f}{floor:>10.1f}{ratio:>9.2f}x"
          f"{ms['torch'] - floor:>12.1f}{ms['dropkit'] - floor:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed steps per case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"one train step (fwd+bwd), median ms; backend={backend_name('cpu')} "
          f"threads={torch.get_num_threads()} reps={args.reps}")
    print(f"{'model':<22}{'torch':>10}{'dropkit':>10}{'floor':>10}{'ratio':>10}{'torch-floor':>12}{'dk-floor':>12}")
    torch.manual_seed(0)
    run("TransformerEncoder", *encoder(), args.reps)
    built = bert()
    if built is None:
        print("tiny BERT: transformers is not installed")
    else:
        run("tiny BERT (sdpa)", *built, args.reps)


if __name__ == "__main__":
    main()
