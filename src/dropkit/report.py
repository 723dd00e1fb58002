"""Summaries of a dropout sweep: the table, the one-line reading, results.json and results.csv.

Every number is a mean over seeds with its standard error ``s / sqrt(n)`` (``s`` the sample
standard deviation, ``n`` the number of seeds). Comparisons between two rates are *paired*: runs
with the same seed share the split, the initial weights and the batch order, so the difference
is taken seed by seed and its own standard error decides whether it is larger than the noise.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dropkit.training import RunResult

__all__ = [
    "METRICS",
    "format_table",
    "json_safe",
    "mean_se",
    "paired_difference",
    "reading",
    "summarize",
    "write_results",
]

# (key, column header, which direction is better) per task, in table order.
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "classification": [
        ("train_acc", "train acc", "higher"),
        ("test_acc", "test acc", "higher"),
        ("gap", "gap", "lower"),
        ("test_nll", "test NLL", "lower"),
        ("ece", "ECE", "lower"),
        ("mc_acc", "MC acc", "higher"),
        ("mc_nll", "MC NLL", "lower"),
    ],
    "regression": [
        ("train_rmse", "train RMSE", "lower"),
        ("test_rmse", "test RMSE", "lower"),
        ("gap", "gap", "lower"),
        ("test_nll", "test NLL", "lower"),
        ("mc_rmse", "MC RMSE", "lower"),
        ("mc_nll", "MC NLL", "lower"),
    ],
}
# A difference counts as real when it exceeds this many standard errors (about a 95% interval).
SIGNIFICANT_SE = 2.0


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)``; the error is NaN for a single value.

    Shape:
        values: ``(n,)``. Output: two floats.

    Example:
        >>> mean_se([1.0, 2.0, 3.0])
        (2.0, 0.5773502691896258)
    """
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def _by_rate(results: Sequence[RunResult]) -> dict[float, dict[int, RunResult]]:
    grouped: dict[float, dict[int, RunResult]] = {}
    for r in results:
        grouped.setdefault(r.config.p, {})[r.config.seed] = r
    return dict(sorted(grouped.items()))


def summarize(results: Sequence[RunResult], task: str) -> list[dict[str, object]]:
    """One row per rate p: ``{"p", "seeds", <metric>: {"mean", "se"}}`` for the task's metrics.

    Example:
        >>> from dropkit.training import TrainConfig
        >>> runs = [RunResult(TrainConfig(p=0.1, seed=s), {"gap": g}) for s, g in [(0, 0.1), (1, 0.3)]]
        >>> row = summarize(runs, "classification")[0]
        >>> row["p"], row["seeds"], round(row["gap"]["mean"], 6)
        (0.1, 2, 0.2)
    """
    rows = []
    for p, runs in _by_rate(results).items():
        row: dict[str, object] = {"p": p, "seeds": len(runs)}
        for key, _, _ in METRICS[task]:
            if all(key in r.metrics for r in runs.values()):
                mean, se = mean_se([r.metrics[key] for r in runs.values()])
                row[key] = {"mean": mean, "se": se}
        rows.append(row)
    return rows


def paired_difference(
    results: Sequence[RunResult], key: str, p: float, baseline: float
) -> tuple[float, float]:
    """Mean and standard error over seeds of ``metric(p) - metric(baseline)``, seed by seed.

    Example:
        >>> from dropkit.training import TrainConfig
        >>> runs = [RunResult(TrainConfig(p=q, seed=s), {"m": v}) for q, s, v in
        ...         [(0.0, 0, 1.0), (0.0, 1, 2.0), (0.5, 0, 0.5), (0.5, 1, 1.7)]]
        >>> [round(v, 6) for v in paired_difference(runs, "m", 0.5, 0.0)]
        [-0.4, 0.1]
    """
    grouped = _by_rate(results)
    seeds = sorted(set(grouped[p]) & set(grouped[baseline]))
    return mean_se([grouped[p][s].metrics[key] - grouped[baseline][s].metrics[key] for s in seeds])


def _cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    # One seed has no standard error: NaN from summarize, None once made JSON-safe.
    if stat["se"] is None or math.isnan(stat["se"]):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['se']:.3f}"


def format_table(rows: Sequence[dict[str, object]], task: str) -> str:
    """The sweep as a fixed-width text table: one line per p, ``mean ± se`` per metric.

    Example:
        >>> print(format_table([{"p": 0.5, "seeds": 1, "gap": {"mean": 0.25, "se": float("nan")}}],
        ...                    "classification").splitlines()[0].split()[:4])
        ['p', 'train', 'acc', 'test']
    """
    headers = ["p"] + [h for _, h, _ in METRICS[task]]
    body = [[f"{row['p']:g}"] + [_cell(row.get(k)) for k, _, _ in METRICS[task]] for row in rows]  # type: ignore
    widths = [max(len(line[j]) for line in [headers, *body]) for j in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [headers, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _compare(results: Sequence[RunResult], key: str, p: float, base: float) -> tuple[float, float, bool]:
    diff, se = paired_difference(results, key, p, base)
    return diff, se, (not math.isnan(se)) and abs(diff) > SIGNIFICANT_SE * se and diff != 0


def _noise_words(se: float, clear: bool) -> str:
    if math.isnan(se):
        return "one seed, so no error bar"
    return f"±{se:.3f}, {'beyond' if clear else 'within'} {SIGNIFICANT_SE:g} standard errors"


def reading(results: Sequence[RunResult], task: str) -> str:
    """One line that states what the sweep shows, computed from the numbers.

    It names the rate with the best test NLL and the best test score (accuracy or RMSE), gives
    each one's paired difference from the smallest rate in the grid (normally p = 0) and says
    whether it exceeds two standard errors, reports how the train-test gap changes from the
    smallest to the largest rate, and where MC dropout gives the best NLL. When no rate beats the
    baseline by more than the noise, it says that dropout does not help.

    Example:
        >>> from dropkit.training import TrainConfig
        >>> m = lambda a, n: {"train_acc": 1.0, "test_acc": a, "gap": 1 - a, "test_nll": n, "mc_nll": n}
        >>> runs = [RunResult(TrainConfig(p=p, seed=s), m(0.9 + p / 10 + s / 100, 0.5 - p / 2 + s / 50))
        ...         for p in (0.0, 0.5) for s in range(3)]
        >>> reading(runs, "classification").startswith("p=0.5 gives the lowest test NLL")
        True
    """
    grouped = _by_rate(results)
    rates = list(grouped)
    base, top = rates[0], rates[-1]
    means = {key: {p: float(np.mean([r.metrics[key] for r in grouped[p].values()])) for p in rates}
             for key, _, _ in METRICS[task] if all(key in r.metrics for r in results)}
    score, score_name, better = ("test_acc", "test accuracy", max) if task == "classification" else (
        "test_rmse", "test RMSE", min)
    if len(rates) == 1:
        return (f"only p={base:g} was run, so there is nothing to compare: test NLL "
                f"{means['test_nll'][base]:.3f}, {score_name} {means[score][base]:.3f}")
    parts = []
    best_nll = min(rates, key=lambda p: means["test_nll"][p])
    diff, se, clear = _compare(results, "test_nll", best_nll, base)
    helps = best_nll != base and clear
    if best_nll == base:
        parts.append(f"dropout does not help test NLL here: p={base:g} has the lowest "
                     f"({means['test_nll'][base]:.3f})")
    else:
        lead = "" if helps else "dropout does not clearly help test NLL: "
        relative = diff / means["test_nll"][base] if means["test_nll"][base] else float("nan")
        parts.append(f"{lead}p={best_nll:g} gives the lowest test NLL ({means['test_nll'][best_nll]:.3f} vs "
                     f"{means['test_nll'][base]:.3f} at p={base:g}, paired difference {diff:+.3f} "
                     f"({relative:+.0%}) {_noise_words(se, clear)})")
    best_score = better(rates, key=lambda p: means[score][p])
    if best_score == base:
        parts.append(f"the best {score_name} is at p={base:g} ({means[score][base]:.3f})")
    else:
        diff, se, clear = _compare(results, score, best_score, base)
        parts.append(f"the best {score_name} is at p={best_score:g} ({means[score][best_score]:.3f}, "
                     f"{diff:+.3f} {_noise_words(se, clear)})")
    diff, se, clear = _compare(results, "gap", top, base)
    g0, g1 = means["gap"][base], means["gap"][top]
    if clear:
        trend = "shrinks" if diff < 0 else "grows"
        parts.append(f"the train-test gap {trend} from {g0:.3f} at p={base:g} to {g1:.3f} at p={top:g}")
    else:
        parts.append(f"the train-test gap does not change beyond the noise ({g0:.3f} at p={base:g}, "
                     f"{g1:.3f} at p={top:g})")
    best_mc = min(rates, key=lambda p: means["mc_nll"][p])
    if best_mc == base:
        parts.append(f"MC dropout's NLL is lowest at p={base:g} ({means['mc_nll'][base]:.3f})")
    else:
        diff, se, clear = _compare(results, "mc_nll", best_mc, base)
        parts.append(f"MC dropout's NLL is lowest at p={best_mc:g} ({means['mc_nll'][best_mc]:.3f} vs "
                     f"{means['mc_nll'][base]:.3f} at p={base:g}, {diff:+.3f} {_noise_words(se, clear)})")
    return "; ".join(parts) + "."


def write_results(
    out: Path, results: Sequence[RunResult], task: str, info: dict[str, object]
) -> dict[str, object]:
    """Write results.json (``info``, such as the settings and the reading, then the summary and
    every run with its curves) and results.csv (the summary table, one row per p, with
    ``<metric>_mean`` and ``<metric>_se`` columns).

    Returns the JSON document. NaN standard errors (a single seed) are written as null / empty.

    Example:
        >>> import tempfile
        >>> from dropkit.training import TrainConfig
        >>> d = Path(tempfile.mkdtemp())
        >>> doc = write_results(d, [RunResult(TrainConfig(), {"gap": 0.1})], "classification", {})
        >>> sorted(p.name for p in d.iterdir()), doc["summary"][0]["gap"]["se"]
        (['results.csv', 'results.json'], None)
    """
    rows = summarize(results, task)
    doc: dict[str, object] = {
        **info,
        "task": task,
        "summary": rows,
        "runs": [r.to_json() for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    keys = [k for k, _, _ in METRICS[task] if rows and k in rows[0]]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["p", "seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "se")])
        for row in rows:
            stats = [row[k][s] for k in keys for s in ("mean", "se")]  # type: ignore[index]
            writer.writerow([row["p"], row["seeds"]] + ["" if math.isnan(v) else repr(v) for v in stats])
    return json_safe(doc)  # type: ignore[return-value]


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by None, so that it is valid JSON.

    Example:
        >>> json_safe({"a": [1.0, float("inf")], "b": float("nan")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
