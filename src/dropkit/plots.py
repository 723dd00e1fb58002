"""The PNG figures of a dropout sweep, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from dropkit.report import summarize
from dropkit.training import RunResult
from dropkit.uncertainty import plot_reliability_diagram, reliability_diagram

__all__ = ["plot_gap_and_nll", "plot_loss_curves", "plot_reliability", "write_plots"]


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rates(results: Sequence[RunResult]) -> list[float]:
    return sorted({r.config.p for r in results})


def plot_loss_curves(results: Sequence[RunResult], path: Path) -> Path:
    """Training (dashed) and test (solid) loss per epoch for every p, averaged over seeds.

    Losses are measured with dropout off, so the curves compare the models themselves; the
    test curve rising while the training curve falls is overfitting.

    Shape:
        Each run's ``train_loss`` / ``test_loss``: ``(epochs,)``.

    Example:
        >>> import tempfile
        >>> from dropkit.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.5), {}, [1.0, 0.5], [1.1, 0.9])
        >>> plot_loss_curves([r], Path(tempfile.mkdtemp()) / "loss.png").exists()
        True
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(_rates(results))))
    for color, p in zip(colors, _rates(results), strict=True):
        runs = [r for r in results if r.config.p == p]
        train = np.mean([r.train_loss for r in runs], axis=0)
        test = np.mean([r.test_loss for r in runs], axis=0)
        epochs = np.arange(1, len(train) + 1)
        ax.plot(epochs, test, color=color, label=f"p={p:g} test")
        ax.plot(epochs, train, color=color, linestyle="--", alpha=0.7, label=f"p={p:g} train")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (dropout off, mean over seeds)")
    ax.set_title("Training (dashed) and test (solid) loss")
    ax.legend(ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_gap_and_nll(results: Sequence[RunResult], task: str, path: Path) -> Path:
    """Train-test gap and test NLL (deterministic and MC dropout) against p, with standard errors.

    Example:
        >>> import tempfile
        >>> from dropkit.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.5), {"gap": 0.1, "test_nll": 0.3, "mc_nll": 0.2})
        >>> plot_gap_and_nll([r], "classification", Path(tempfile.mkdtemp()) / "gap.png").exists()
        True
    """
    plt = _pyplot()
    rows = summarize(results, task)
    ps = [row["p"] for row in rows]

    def series(key: str) -> tuple[list[float], list[float]]:
        stats = [row[key] for row in rows]  # type: ignore[index]
        return [s["mean"] for s in stats], [0.0 if np.isnan(s["se"]) else s["se"] for s in stats]

    fig, (ax_gap, ax_nll) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_gap.errorbar(ps, *series("gap"), marker="o", capsize=3)
    ax_gap.set_xlabel("dropout rate p")
    gap_label = "train acc - test acc" if task == "classification" else "test RMSE - train RMSE"
    ax_gap.set_ylabel(gap_label)
    ax_gap.set_title("Train-test gap")
    ax_nll.errorbar(ps, *series("test_nll"), marker="o", capsize=3, label="dropout off")
    ax_nll.errorbar(ps, *series("mc_nll"), marker="s", capsize=3, label="MC dropout")
    ax_nll.set_xlabel("dropout rate p")
    ax_nll.set_ylabel("test NLL")
    ax_nll.set_title("Test NLL (mean ± standard error)")
    ax_nll.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_reliability(results: Sequence[RunResult], labels: dict[int, torch.Tensor], rates: Sequence[float],
                     path: Path) -> Path:
    """Reliability diagrams side by side for the given rates, test predictions pooled over seeds.

    Args:
        results: the runs (classification, with ``test_probs``).
        labels: the test labels of each seed's split, ``seed -> (N_test,)``.
        rates: which p to draw, one panel each.
        path: the PNG to write.

    Example:
        >>> import tempfile
        >>> from dropkit.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.0), {}, test_probs=torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
        >>> f = Path(tempfile.mkdtemp()) / "r.png"
        >>> plot_reliability([r], {0: torch.tensor([0, 0])}, [0.0], f).exists()
        True
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rates), figsize=(4 * len(rates), 4), squeeze=False)
    for ax, p in zip(axes[0], rates, strict=True):
        runs = [r for r in results if r.config.p == p]
        probs = torch.cat([r.test_probs for r in runs])  # type: ignore[misc]
        y = torch.cat([labels[r.config.seed] for r in runs])
        plot_reliability_diagram(reliability_diagram(probs, y), ax=ax)
        ax.set_title(f"p={p:g}: {ax.get_title()}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(results: Sequence[RunResult], task: str, out: Path,
                labels: dict[int, torch.Tensor] | None = None) -> list[Path]:
    """Write loss_curves.png, gap_nll.png and (classification) reliability.png into ``out``.

    The reliability figure compares the smallest p of the grid with the p of lowest test NLL
    (or the largest p when the smallest is also the best).

    Example:
        >>> import tempfile
        >>> from dropkit.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.5), {"gap": 0.1, "test_nll": 0.3, "mc_nll": 0.2}, [1.0], [1.2])
        >>> [p.name for p in write_plots([r], "regression", Path(tempfile.mkdtemp()))]
        ['loss_curves.png', 'gap_nll.png']
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_loss_curves(results, out / "loss_curves.png"),
             plot_gap_and_nll(results, task, out / "gap_nll.png")]
    if task == "classification" and labels is not None:
        rows = summarize(results, task)
        rates = _rates(results)
        best = min(rows, key=lambda row: row["test_nll"]["mean"])["p"]  # type: ignore[index]
        other = best if best != rates[0] else rates[-1]
        shown = [rates[0]] if other == rates[0] else [rates[0], other]
        paths.append(plot_reliability(results, labels, shown, out / "reliability.png"))  # type: ignore[arg-type]
    return paths
