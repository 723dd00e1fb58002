"""Subprocess half of the exact-resume test in test_reproducibility.py.

``python resume_worker.py full DIR K``: train the guide's MLP 2K steps in one process, saving a
checkpoint after K steps (model, optimizer, and torch's RNG state) and the final parameters.
``python resume_worker.py resume DIR K``: in a new process, restore that checkpoint and train the
remaining K steps, once restoring torch's RNG state and once not.
Both do it for seeded dropkit layers and for the default mode (seeds from torch's generator).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dropkit.app.models import SimpleModelWithDropout
from dropkit.distributed import seed_model

MODES = ("seeded", "default")


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Data from its own generator, indexed by step, so it needs no state of its own on resume.
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)


def build(mode: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SimpleModelWithDropout(0.5, input_dropout=0.2)
    if mode == "seeded":
        seed_model(model, 123)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def main() -> None:
    phase, out, k = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    results = {}
    for mode in MODES:
        if phase == "full":
            model, optimizer = build(mode)
            train(model, optimizer, range(k))
            checkpoint = {
                "model": model.state_dict(),  # holds each seeded layer's seed and offset
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),  # what the default mode draws seeds from
            }
            torch.save(checkpoint, out / f"{mode}.ckpt")
            train(model, optimizer, range(k, 2 * k))
            results[mode] = params(model)
        else:
            for restore_rng in (True, False):
                model, optimizer = build(mode)
                torch.manual_seed(99)  # a new process's generator is anywhere
                checkpoint = torch.load(out / f"{mode}.ckpt")
                model.load_state_dict(checkpoint["model"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                if restore_rng:
                    torch.set_rng_state(checkpoint["torch_rng"])
                train(model, optimizer, range(k, 2 * k))
                results[mode, restore_rng] = params(model)
    torch.save(results, out / f"{phase}.pt")


if __name__ == "__main__":
    main()
