"""Calibration of predicted class probabilities: ECE, NLL, Brier score, reliability diagrams.

ECE and reliability diagrams follow Naeini et al., "Obtaining Well Calibrated Probabilities
Using Bayesian Binning" (AAAI 2015) and Guo et al., "On Calibration of Modern Neural Networks"
(ICML 2017); the Brier score is Brier, "Verification of Forecasts Expressed in Terms of
Probability" (Monthly Weather Review, 1950). Pass MC-averaged probabilities
(``classification_summary(probs).mean_probs``) to evaluate MC dropout.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from dropkit.uncertainty._checks import check_labels, check_probs

__all__ = [
    "ReliabilityDiagram",
    "expected_calibration_error",
    "negative_log_likelihood",
    "brier_score",
    "reliability_diagram",
    "plot_reliability_diagram",
]


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (B bins; empty bins have NaN accuracy and confidence).

    Attributes:
        bin_edges: ``(B + 1,)`` edges ``0, 1/B, ..., 1``; bin ``b`` is ``(edges[b], edges[b+1]]``.
        counts: ``(B,)`` number of inputs whose confidence falls in each bin.
        accuracy: ``(B,)`` fraction of those predicted correctly.
        confidence: ``(B,)`` their mean confidence.
        ece: the expected calibration error of the same bins.
    """

    bin_edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor
    ece: float


def _n_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    return int(n_bins)


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityDiagram:
    r"""Bin predictions by confidence and compare each bin's accuracy with its confidence.

    Confidence is ``\max_c p_c`` and the prediction ``argmax_c p_c``; bin ``b`` holds the
    confidences in ``(b / B, (b + 1) / B]`` (equal width). The ECE of these bins is
    ``\sum_b \frac{n_b}{N} |acc_b - conf_b|`` (Guo et al. 2017, eq. 3).

    Args:
        probs: predicted probabilities (rows sum to 1).
        labels: true classes.
        n_bins: number of equal-width bins ``B``. Default: 15.

    Shape:
        probs: ``(N, C)``; labels: ``(N,)``. Output fields as in :class:`ReliabilityDiagram`.

    Example:
        >>> d = reliability_diagram(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]), n_bins=5)
        >>> d.counts.tolist(), round(d.ece, 6)
        ([0, 0, 0, 1, 1], 0.4)
    """
    probs = check_probs(probs, 2, "(N, C)")
    labels = check_labels(labels, probs.shape[0], probs.shape[1])
    n_bins = _n_bins(n_bins)
    probs = probs.to(torch.float64)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels.to(probs.device)).to(torch.float64)
    # Bin b covers (b/B, (b+1)/B]; a confidence is at least 1/C > 0, so ceil(conf * B) - 1 >= 0.
    index = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    counts = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    denom = counts.to(torch.float64)
    accuracy = acc_sum / denom
    mean_conf = conf_sum / denom
    ece = float((acc_sum - conf_sum).abs().sum() / probs.shape[0])
    return ReliabilityDiagram(
        bin_edges=torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64),
        counts=counts,
        accuracy=accuracy,
        confidence=mean_conf,
        ece=ece,
    )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error: ``\sum_b \frac{n_b}{N} |acc_b - conf_b|`` over equal-width bins.

    Naeini et al. 2015, Guo et al. 2017 (eq. 3): confidence ``\max_c p_c``, ``B`` bins
    ``(b/B, (b+1)/B]``, L1 gap between each bin's accuracy and mean confidence, weighted by the
    fraction of inputs in the bin. 0 is perfectly calibrated.

    Args:
        probs: predicted probabilities (rows sum to 1).
        labels: true classes.
        n_bins: number of bins. Default: 15.

    Shape:
        probs: ``(N, C)``; labels: ``(N,)``. Output: a float.

    Example:
        >>> round(expected_calibration_error(torch.tensor([[0.8, 0.2], [0.8, 0.2]]), torch.tensor([0, 1])), 6)
        0.3
    """
    return reliability_diagram(probs, labels, n_bins).ece


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Mean negative log-likelihood of the true classes: ``-\frac1N \sum_n \log p_{n, y_n}``.

    A probability of exactly 0 on a true class is clamped to the smallest normal float64 (about
    2.2e-308), so the result stays finite (about 708 for that point).

    Shape:
        probs: ``(N, C)``; labels: ``(N,)``. Output: a float.

    Example:
        >>> round(negative_log_likelihood(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1])), 6)
        0.490415
    """
    probs = check_probs(probs, 2, "(N, C)")
    labels = check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    true = probs.to(torch.float64).gather(1, labels[:, None]).squeeze(1)
    return float(-true.clamp_min(torch.finfo(torch.float64).tiny).log().mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Brier score: ``\frac1N \sum_n \sum_c (p_{n,c} - [y_n = c])^2`` (Brier 1950); 0 is perfect.

    Computed on whatever probabilities are passed (for MC dropout, the averaged ones); the
    worst possible value is 2 (all mass on a wrong class).

    Shape:
        probs: ``(N, C)``; labels: ``(N,)``. Output: a float.

    Example:
        >>> brier_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1]))
        0.25
    """
    probs = check_probs(probs, 2, "(N, C)")
    labels = check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)
    return float(((probs.to(torch.float64) - onehot) ** 2).sum(1).mean())


def plot_reliability_diagram(data: ReliabilityDiagram, ax: Any = None) -> Any:
    """Draw a reliability diagram with matplotlib: per-bin accuracy bars against the diagonal.

    Bars show each bin's accuracy, a red outline the gap to its mean confidence, the dashed
    diagonal perfect calibration; the title gives the ECE. matplotlib is imported only here.

    Args:
        data: the output of :func:`reliability_diagram`.
        ax: a matplotlib Axes to draw on (a new figure's if None).

    Returns:
        The Axes.

    Shape:
        Not applicable (a plot).

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> d = reliability_diagram(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 1]))
        >>> plot_reliability_diagram(d).get_title()
        'ECE = 0.200'
    """
    if not isinstance(data, ReliabilityDiagram):
        name = type(data).__name__
        raise TypeError(f"data must be a ReliabilityDiagram (from reliability_diagram), got {name}")
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_reliability_diagram needs matplotlib: pip install matplotlib") from exc
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    edges = data.bin_edges.tolist()
    width = edges[1] - edges[0]
    filled = data.counts > 0
    left = torch.tensor(edges[:-1], dtype=torch.float64)[filled].tolist()
    acc = data.accuracy[filled].tolist()
    conf = data.confidence[filled].tolist()
    ax.bar(left, acc, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(
        left,
        [c - a for a, c in zip(acc, conf, strict=True)],
        bottom=acc,
        width=width,
        align="edge",
        fill=False,
        edgecolor="red",
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE = {data.ece:.3f}")
    ax.legend(loc="upper left")
    return ax
