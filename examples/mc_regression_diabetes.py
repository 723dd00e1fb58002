"""MC dropout regression on scikit-learn's diabetes data, after Gal & Ghahramani's UCI protocol.

Gal & Ghahramani, "Dropout as a Bayesian Approximation" (ICML 2016), section 5.3: a network
with one hidden ReLU layer of 50 units and dropout, 20 random 90/10 train/test splits, inputs
and targets standardized with training statistics, dropout rate ``p`` and model precision
``tau`` chosen on a validation split, then RMSE and test log-likelihood (in the target's own
units) reported as mean +- standard error over the splits. MC dropout (T stochastic passes)
is compared with the same trained network used deterministically (dropout off: the usual
weight-averaging approximation), whose ``tau`` is chosen on the validation split the same way.

To stay well under two minutes on two cores the grid is small (3 rates x 5 precisions), the
weight decay is fixed rather than re-derived from each ``tau`` (so one training serves every
``tau`` of a rate), and training is 250 full-batch Adam steps.

Run: ``python examples/mc_regression_diabetes.py``.
"""

from __future__ import annotations

import math
import time

import torch
from sklearn.datasets import load_diabetes
from torch import nn

import dropkit
from dropkit.uncertainty import gal_log_likelihood, mc_predict

SPLITS = 20
RATES = (0.05, 0.1, 0.2)
TAUS = (0.5, 1.0, 1.5, 2.0, 3.0)  # precision of the standardized target
SAMPLES = 200
STEPS = 250
WEIGHT_DECAY = 1e-4


def make_model(in_features: int, p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 50), nn.ReLU(), dropkit.Dropout(p), nn.Linear(50, 1))


def fit(x: torch.Tensor, y: torch.Tensor, p: float) -> nn.Module:
    model = make_model(x.shape[1], p)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x).squeeze(1) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return model.eval()


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return tuple((t - mean) / std for t in (train, *others))


def predictions(model: nn.Module, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Standardized predictions, (T, N): MC passes, and the deterministic net as T = 1."""
    with torch.no_grad():
        deterministic = model(x).squeeze(1)[None]
    mc = mc_predict(model, x, SAMPLES, seed=seed).squeeze(2)
    return {"deterministic": deterministic, "mc": mc}


def one_split(x: torch.Tensor, y: torch.Tensor, split: int) -> dict[str, tuple[float, float]]:
    g = torch.Generator().manual_seed(split)
    perm = torch.randperm(len(x), generator=g)
    n_test = len(x) // 10
    test, train = perm[:n_test], perm[n_test:]
    n_val = len(train) // 5
    val, sub = train[:n_val], train[n_val:]

    # Choose (p, tau) per method by validation log-likelihood, with sub-training statistics.
    xs, xv = standardize(x[sub], x[val])
    ys, yv = standardize(y[sub], y[val])
    best: dict[str, tuple[float, float, float]] = {}
    for p in RATES:
        model = fit(xs, ys, p)
        for method, out in predictions(model, xv, seed=split).items():
            for tau in TAUS:
                ll = gal_log_likelihood(out, yv, tau)
                if method not in best or ll > best[method][0]:
                    best[method] = (ll, p, tau)

    # Retrain on the whole training set with the chosen rate; evaluate in the target's units.
    xt, xtest = standardize(x[train], x[test])
    y_mean, y_std = y[train].mean(), y[train].std()
    yt = (y[train] - y_mean) / y_std
    models: dict[float, nn.Module] = {}
    results = {}
    for method, (_, p, tau) in best.items():
        if p not in models:
            models[p] = fit(xt, yt, p)
        out = predictions(models[p], xtest, seed=1000 + split)[method] * y_std + y_mean
        rmse = float(((out.mean(0) - y[test]) ** 2).mean().sqrt())
        results[method] = (rmse, gal_log_likelihood(out, y[test], tau / float(y_std) ** 2))
    return results


def mean_se(values: list[float]) -> str:
    m = sum(values) / len(values)
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{m:8.2f} +- {se:5.2f}"


def main() -> None:
    start = time.perf_counter()
    # 50-unit layers on a few hundred rows: a second thread only adds synchronization.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)
    per_split = [one_split(x, y, s) for s in range(SPLITS)]
    print(f"diabetes: N={len(x)}, D={x.shape[1]}, {SPLITS} random 90/10 splits, MC samples T={SAMPLES}")
    print(f"{'method':<32}{'RMSE':>18}{'test log-likelihood':>24}")
    for method, label in (("deterministic", "deterministic (dropout off)"), ("mc", "MC dropout")):
        rmse = [r[method][0] for r in per_split]
        ll = [r[method][1] for r in per_split]
        print(f"{label:<32}{mean_se(rmse):>18}{mean_se(ll):>24}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
