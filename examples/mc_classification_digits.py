"""MC dropout classification on scikit-learn's 8x8 digits: calibration and out-of-distribution inputs.

Trains the guide's MLP (``SimpleModelWithDropout``: 64 -> 128 -> dropout 0.5 -> 10) and reports
accuracy, negative log-likelihood, expected calibration error (15 bins) and Brier score for the
deterministic network (dropout off) and for MC dropout (probabilities of T passes averaged).
Then it compares the mutual information between prediction and weights (BALD) on the test set
with the same on out-of-distribution inputs: heavily noised digits and inverted digits
(``1 - x``). The AUROC of MI for telling them apart is 0.5 for chance and 1 for a perfect split.

Run: ``python examples/mc_classification_digits.py``.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from dropkit.app.models import SimpleModelWithDropout
from dropkit.uncertainty import (
    brier_score,
    classification_summary,
    expected_calibration_error,
    mc_probs,
    negative_log_likelihood,
)

SAMPLES = 100
EPOCHS = 150


def train(x: torch.Tensor, y: torch.Tensor) -> SimpleModelWithDropout:
    model = SimpleModelWithDropout(dropout_prob=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def metrics_row(label: str, probs: torch.Tensor, y: torch.Tensor) -> str:
    acc = float((probs.argmax(1) == y).double().mean())
    nll = negative_log_likelihood(probs, y)
    ece = expected_calibration_error(probs, y)
    brier = brier_score(probs, y)
    return f"{label:<30}{acc:>10.4f}{nll:>10.4f}{ece:>10.4f}{brier:>10.4f}"


def main() -> None:
    start = time.perf_counter()
    torch.set_num_threads(1)  # a 64-128-10 MLP: a second thread only adds synchronization
    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x))
    n_test = len(x) * 3 // 10
    test, tr = perm[:n_test], perm[n_test:]
    model = train(x[tr], y[tr])

    xt, yt = x[test], y[test]
    with torch.no_grad():
        deterministic = torch.softmax(model(xt), -1)
    mc = classification_summary(mc_probs(model, xt, SAMPLES, seed=1))
    print(f"digits: {len(tr)} train / {len(xt)} test, MLP 64-128-10, p=0.5, {EPOCHS} epochs, T={SAMPLES}")
    print(f"{'':<30}{'accuracy':>10}{'NLL':>10}{'ECE':>10}{'Brier':>10}")
    print(metrics_row("deterministic (dropout off)", deterministic, yt))
    print(metrics_row("MC dropout (mean of T probs)", mc.mean_probs, yt))

    g = torch.Generator().manual_seed(2)
    ood = {
        "noised (x + N(0, 1), clipped)": (xt + torch.randn(xt.shape, generator=g)).clamp(0, 1),
        "inverted (1 - x)": 1.0 - xt,
    }
    print()
    print(f"{'inputs':<32}{'mean MI':>10}{'AUROC of MI vs test':>22}")
    print(f"{'test digits':<32}{float(mc.mutual_information.mean()):>10.4f}{'':>22}")
    for label, xo in ood.items():
        mi = classification_summary(mc_probs(model, xo, SAMPLES, seed=3)).mutual_information
        scores = torch.cat([mc.mutual_information, mi])
        is_ood = torch.cat([torch.zeros(len(xt)), torch.ones(len(xo))])
        auroc = roc_auc_score(is_ood.numpy(), scores.numpy())
        print(f"{label:<32}{float(mi.mean()):>10.4f}{auroc:>22.4f}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
