"""The PNG figures of a dropout sweep, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from dropkit.app.report import summarize
from dropkit.app.training import RunResult
from dropkit.uncertainty import reliability_diagram

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
    test curve rising while the training curve falls is overfitting. A second panel draws the
    test loss alone on a linear axis zoomed on it (stated on the axis), with each curve's
    minimum marked and its value at the minimum and at the last epoch in the legend.

    Shape:
        Each run's ``train_loss`` / ``test_loss``: ``(epochs,)``.

    Example:
        >>> import tempfile
        >>> from dropkit.app.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.5), {}, [1.0, 0.5], [1.1, 0.9])
        >>> plot_loss_curves([r], Path(tempfile.mkdtemp()) / "loss.png").exists()
        True
    """
    plt = _pyplot()
    fig, (ax, ax_test) = plt.subplots(1, 2, figsize=(11, 4.5))
    ends: list[float] = []
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(_rates(results))))
    for color, p in zip(colors, _rates(results), strict=True):
        runs = [r for r in results if r.config.p == p]
        train = np.mean([r.train_loss for r in runs], axis=0)
        test = np.mean([r.test_loss for r in runs], axis=0)
        epochs = np.arange(1, len(train) + 1)
        ax.plot(epochs, test, color=color, label=f"p={p:g} test")
        ax.plot(epochs, train, color=color, linestyle="--", alpha=0.7, label=f"p={p:g} train")
        low = int(np.argmin(test))
        label = f"p={p:g}: {test[low]:.3f} at its lowest (epoch {low + 1}), {test[-1]:.3f} at the end"
        ax_test.plot(epochs, test, color=color, label=label)
        ax_test.plot(epochs[low], test[low], "o", color=color)
        ends.append(test[-1])
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (dropout off, mean over seeds)")
    ax.set_title("Training (dashed) and test (solid) loss, log scale")
    ax.legend(ncol=2, fontsize=7)
    # A linear axis zoomed on the test loss shows the turn that the log scale flattens.
    lowest = min(min(np.mean([r.test_loss for r in results if r.config.p == p], axis=0))
                 for p in _rates(results))
    ax_test.set_ylim(0.9 * lowest, 1.6 * max(ends))
    ax_test.set_xlabel("epoch")
    ax_test.set_ylabel("test loss (linear, zoomed: axis not from 0)")
    ax_test.set_title("Test loss: rising after its minimum is overfitting")
    ax_test.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_gap_and_nll(results: Sequence[RunResult], task: str, path: Path) -> Path:
    """Train-test gap and test NLL (deterministic and MC dropout) against p, with standard errors.

    The gap axis starts at 0 (lower only if a gap is negative), so a small change looks small.

    Example:
        >>> import tempfile
        >>> from dropkit.app.training import TrainConfig
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
    gaps, gap_se = series("gap")
    ax_gap.errorbar(ps, gaps, gap_se, marker="o", capsize=3)
    # The axis starts at 0 so that the height of a point is the size of the gap, not a zoom on it.
    top = max([g + e for g, e in zip(gaps, gap_se, strict=True)] + [0.0])
    ax_gap.set_ylim(min([g - e for g, e in zip(gaps, gap_se, strict=True)] + [0.0]), 1.15 * top or 1.0)
    ax_gap.set_xlabel("dropout rate p")
    gap_label = "train acc - test acc" if task == "classification" else "test RMSE - train RMSE"
    ax_gap.set_ylabel(gap_label)
    ax_gap.set_title("Train-test gap")
    ax_nll.errorbar(ps, *series("test_nll"), marker="o", capsize=3, label="dropout off")
    ax_nll.errorbar(ps, *series("mc_nll"), marker="s", capsize=3, label="MC dropout")
    ax_nll.set_xlabel("dropout rate p")
    ax_nll.set_ylabel("test NLL")
    ax_nll.set_title("Test NLL (bars: standard error over seeds)", fontsize=10)
    ax_nll.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# A confidence bin with fewer predictions than this is drawn faintly: its accuracy is noise.
SPARSE_BIN = 20


def _draw_reliability(ax: object, probs: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy bars per confidence bin against the diagonal; near-empty bins faint and hatched."""
    diagram = reliability_diagram(probs, y)
    edges = diagram.bin_edges.tolist()
    width = edges[1] - edges[0]
    for b, count in enumerate(diagram.counts.tolist()):
        if count == 0:
            continue
        sparse = count < SPARSE_BIN
        acc, conf = float(diagram.accuracy[b]), float(diagram.confidence[b])
        ax.bar(edges[b], acc, width=width, align="edge", color="tab:blue", edgecolor="black",  # type: ignore
               alpha=0.25 if sparse else 0.9, hatch="//" if sparse else None, linewidth=0.5)
        ax.bar(edges[b], conf - acc, bottom=acc, width=width, align="edge", fill=False,  # type: ignore
               edgecolor="tab:red", alpha=0.3 if sparse else 1.0, linewidth=1.0)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)  # type: ignore[attr-defined]
    ax.set_xlim(0, 1)  # type: ignore[attr-defined]
    ax.set_ylim(0, 1)  # type: ignore[attr-defined]
    ax.set_xlabel("confidence")  # type: ignore[attr-defined]
    ax.set_ylabel("accuracy")  # type: ignore[attr-defined]
    return diagram.ece


def plot_reliability(results: Sequence[RunResult], labels: dict[int, torch.Tensor], rates: Sequence[float],
                     path: Path) -> Path:
    """Reliability diagrams side by side for the given rates, test predictions pooled over seeds.

    Bars are the accuracy of each of 15 confidence bins, red outlines the distance to the bin's
    mean confidence, the dashed diagonal perfect calibration. A bin with fewer than
    ``SPARSE_BIN`` predictions is drawn faint and hatched, so that it is not read as evidence.
    The figure title says how many seeds and predictions each panel pools.

    Args:
        results: the runs (classification, with ``test_probs``).
        labels: the test labels of each seed's split, ``seed -> (N_test,)``.
        rates: which p to draw, one panel each.
        path: the PNG to write.

    Example:
        >>> import tempfile
        >>> from dropkit.app.training import TrainConfig
        >>> r = RunResult(TrainConfig(p=0.0), {}, test_probs=torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
        >>> f = Path(tempfile.mkdtemp()) / "r.png"
        >>> plot_reliability([r], {0: torch.tensor([0, 0])}, [0.0], f).exists()
        True
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rates), figsize=(4 * len(rates), 4.4), squeeze=False)
    pooled = ""
    for ax, p in zip(axes[0], rates, strict=True):
        runs = [r for r in results if r.config.p == p]
        probs = torch.cat([r.test_probs for r in runs])  # type: ignore[misc]
        y = torch.cat([labels[r.config.seed] for r in runs])
        ece = _draw_reliability(ax, probs, y)
        ax.set_title(f"p={p:g}: ECE of the pooled predictions = {ece:.3f}", fontsize=9)
        seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
        pooled = f"{seeds} pooled, {len(y)} test predictions per panel"
    fig.suptitle(f"Reliability ({pooled}; hatched: bins with < {SPARSE_BIN} predictions)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(results: Sequence[RunResult], task: str, out: Path,
                labels: dict[int, torch.Tensor] | None = None) -> list[Path]:
    """Write loss_curves.png, gap_nll.png and (classification) reliability.png into ``out``.

    The reliability figure compares the smallest p of the grid (normally p = 0) with the p of
    lowest test NLL (or the largest p when the smallest is also the best).

    Example:
        >>> import tempfile
        >>> from dropkit.app.training import TrainConfig
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
