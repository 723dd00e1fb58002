"""Summaries of a dropout sweep: the table, the one-line reading, results.json and results.csv.

Every number is a mean over seeds with its standard error ``s / sqrt(n)`` (``s`` the sample
standard deviation, ``n`` the number of seeds). Comparisons between two rates are *paired*: runs
with the same seed share the split, the initial weights and the batch order, so the difference
is taken seed by seed and its own standard error decides whether it is larger than the noise.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

import numpy as np

from dropkit.app.training import RunResult

__all__ = [
    "METRICS",
    "Progress",
    "format_table",
    "json_safe",
    "legend",
    "mean_se",
    "paired_difference",
    "reading",
    "summarize",
    "write_index_html",
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
        >>> from dropkit.app.training import TrainConfig
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
        >>> from dropkit.app.training import TrainConfig
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


def _held_out_words(text: str, held_out: str) -> str:
    """``text`` with the word "test" replaced by ``held_out`` ("val" in a column header)."""
    if held_out not in ("test", "validation"):
        raise ValueError(f"held_out must be 'test' or 'validation', got {held_out!r}")
    return text if held_out == "test" else re.sub(r"\btest\b", held_out, text)


def format_table(rows: Sequence[dict[str, object]], task: str, held_out: str = "test") -> str:
    """The sweep as a fixed-width text table: one line per p, ``mean ± se`` per metric.

    ``held_out="validation"`` heads the held-out columns "val" instead of "test" (the rows that
    ``dropkit train`` holds out choose the rate, so they are not a test set).

    Example:
        >>> print(format_table([{"p": 0.5, "seeds": 1, "gap": {"mean": 0.25, "se": float("nan")}}],
        ...                    "classification").splitlines()[0].split()[:4])
        ['p', 'train', 'acc', 'test']
    """
    short = "test" if held_out == "test" else "val"
    headers = ["p"] + [_held_out_words(h, held_out).replace(held_out, short) for _, h, _ in METRICS[task]]
    body = [[f"{row['p']:g}"] + [_cell(row.get(k)) for k, _, _ in METRICS[task]] for row in rows]  # type: ignore
    widths = [max(len(line[j]) for line in [headers, *body]) for j in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [headers, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _compare(results: Sequence[RunResult], key: str, p: float, base: float) -> tuple[float, float, bool]:
    diff, se = paired_difference(results, key, p, base)
    return diff, se, (not math.isnan(se)) and abs(diff) > SIGNIFICANT_SE * se and diff != 0


def _difference(diff: float, se: float, clear: bool, relative: str = "") -> str:
    """``-0.057 ±0.012 (-17%), beyond 2 standard errors``: a paired difference and its noise."""
    if math.isnan(se):
        return f"{diff:+.3f}{relative}, one seed, so no error bar"
    side = "beyond" if clear else "within"
    return f"{diff:+.3f} ±{se:.3f}{relative}, {side} {SIGNIFICANT_SE:g} standard errors"


def _value(values: Sequence[float]) -> str:
    """``mean ±se`` of one rate's values over the seeds (the mean alone for one seed)."""
    mean, se = mean_se(values)
    return f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ±{se:.3f}"


def _relative(diff: float, base: float, task: str) -> str:
    """`` (-17%)``: a difference as a share of the baseline, only where that share means something.

    Classification NLL is a loss with 0 for perfect predictions, so a share of a positive
    baseline reads as "this much of the loss". The Gaussian NLL of a regression has no such
    zero (it moves with the target's units and can be negative), so it gets no percentage, nor
    does a baseline too close to zero for a share of it to be stable.
    """
    if task != "classification" or not base > 0 or abs(diff) > base:
        return ""
    return f" ({diff / base:+.0%})"


def reading(results: Sequence[RunResult], task: str, held_out: str = "test") -> str:
    """One line that states what the sweep shows, computed from the numbers.

    ``held_out="validation"`` says "validation" where the line would say "test".

    It names the rate with the best test NLL and the best test score (accuracy or RMSE), gives
    each one's paired difference ``metric(p) - metric(p0)`` from the smallest rate ``p0`` in the
    grid (normally p = 0) with its standard error and says whether it exceeds two standard
    errors, reports how the train-test gap changes from the smallest to the largest rate, and
    where MC dropout gives the best NLL. Every statement carries a ± (the paired difference's
    standard error, or the mean's where a rate is compared with nothing). When no rate beats the
    baseline by more than the noise, it says that dropout does not help. A difference is a share
    of the baseline (in %) only for classification NLL, whose baseline is a positive loss.

    Example:
        >>> from dropkit.app.training import TrainConfig
        >>> m = lambda a, n: {"train_acc": 1.0, "test_acc": a, "gap": 1 - a, "test_nll": n, "mc_nll": n}
        >>> runs = [RunResult(TrainConfig(p=p, seed=s), m(0.9 + p / 10 + s / 100, 0.5 - p / 2 + s / 50))
        ...         for p in (0.0, 0.5) for s in range(3)]
        >>> reading(runs, "classification").startswith("p=0.5 gives the lowest test NLL")
        True
    """
    grouped = _by_rate(results)
    rates = list(grouped)
    base, top = rates[0], rates[-1]
    values = {key: {p: [r.metrics[key] for r in grouped[p].values()] for p in rates}
              for key, _, _ in METRICS[task] if all(key in r.metrics for r in results)}
    means = {key: {p: float(np.mean(v)) for p, v in per_rate.items()} for key, per_rate in values.items()}
    score, score_name, better = ("test_acc", "test accuracy", max) if task == "classification" else (
        "test_rmse", "test RMSE", min)
    if len(rates) == 1:
        return _held_out_words(
            f"only p={base:g} was run, so there is nothing to compare: test NLL "
            f"{_value(values['test_nll'][base])}, {score_name} {_value(values[score][base])}.", held_out)
    parts = []
    best_nll = min(rates, key=lambda p: means["test_nll"][p])
    diff, se, clear = _compare(results, "test_nll", best_nll, base)
    helps = best_nll != base and clear
    if best_nll == base:
        parts.append(f"dropout does not help test NLL here: p={base:g} has the lowest "
                     f"({_value(values['test_nll'][base])})")
    else:
        lead = "" if helps else "dropout does not clearly help test NLL: "
        rel = _relative(diff, means["test_nll"][base], task)
        parts.append(f"{lead}p={best_nll:g} gives the lowest test NLL ({means['test_nll'][best_nll]:.3f} vs "
                     f"{means['test_nll'][base]:.3f} at p={base:g}, paired difference "
                     f"{_difference(diff, se, clear, rel)})")
    best_score = better(rates, key=lambda p: means[score][p])
    if best_score == base:
        parts.append(f"the best {score_name} is at p={base:g} ({_value(values[score][base])})")
    else:
        diff, se, clear = _compare(results, score, best_score, base)
        parts.append(f"the best {score_name} is at p={best_score:g} ({means[score][best_score]:.3f}, "
                     f"{_difference(diff, se, clear)})")
    diff, se, clear = _compare(results, "gap", top, base)
    g0, g1 = means["gap"][base], means["gap"][top]
    if clear:
        trend = "shrinks" if diff < 0 else "grows"
        parts.append(f"the train-test gap {trend} from {g0:.3f} at p={base:g} to {g1:.3f} at p={top:g} "
                     f"({_difference(diff, se, clear)})")
    else:
        parts.append(f"the train-test gap does not change beyond the noise ({g0:.3f} at p={base:g}, "
                     f"{g1:.3f} at p={top:g}, {_difference(diff, se, clear)})")
    best_mc = min(rates, key=lambda p: means["mc_nll"][p])
    if best_mc == base:
        parts.append(f"MC dropout's NLL is lowest at p={base:g} ({_value(values['mc_nll'][base])})")
    else:
        diff, se, clear = _compare(results, "mc_nll", best_mc, base)
        parts.append(f"MC dropout's NLL is lowest at p={best_mc:g} ({means['mc_nll'][best_mc]:.3f} vs "
                     f"{means['mc_nll'][base]:.3f} at p={base:g}, "
                     f"{_difference(diff, se, clear, _relative(diff, means['mc_nll'][base], task))})")
    return _held_out_words("; ".join(parts) + ".", held_out)


def write_results(
    out: Path, results: Sequence[RunResult], task: str, info: dict[str, object]
) -> dict[str, object]:
    """Write results.json (``info``, such as the settings and the reading, then the summary and
    every run with its curves) and results.csv (the summary table, one row per p, with
    ``<metric>_mean`` and ``<metric>_se`` columns).

    Returns the JSON document. NaN standard errors (a single seed) are written as null / empty.

    Example:
        >>> import tempfile
        >>> from dropkit.app.training import TrainConfig
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


def legend(task: str, p_input: float = 0.0, held_out: str = "test", seeds: int = 2) -> str:
    """The few lines printed under the table: what p, gap, NLL, ECE and the MC columns mean.

    ``held_out`` names the rows the model never trained on: "test" for the demo's test split,
    "validation" for the split that ``dropkit train`` holds out of the user's file.

    Example:
        >>> print(legend("classification", 0.2).splitlines()[0])
        p: hidden dropout rate; runs with p > 0 also drop inputs at 0.2, p = 0 has no dropout at all.
        >>> "validation" in legend("regression", held_out="validation")
        True
    """
    if held_out not in ("test", "validation"):
        raise ValueError(f"held_out must be 'test' or 'validation', got {held_out!r}")
    rows = f"{held_out} rows"
    short, named = ("test", "") if held_out == "test" else ("val", " (val: the validation rows)")
    first = "p: hidden dropout rate"
    first += (f"; runs with p > 0 also drop inputs at {p_input:g}, p = 0 has no dropout at all."
              if p_input > 0 else "; no input dropout.")
    lines = [first, "Each cell: mean ± standard error over the seeds." if seeds > 1 else
             "Each cell: the value of the one seed (one seed has no error bar)."]
    if task == "classification":
        lines += [
            f"gap: train acc - {short} acc{named}; positive means the model does better on its "
            "training rows.",
            f"{short} NLL: mean -log p(true class) on the {rows}, dropout off; lower is better, and "
            "it punishes confident mistakes that accuracy does not see.",
            "ECE: expected calibration error, |accuracy - confidence| averaged over 15 confidence bins; "
            "0 is perfectly calibrated.",
            "MC acc / MC NLL: the same with the prediction averaged over the MC-dropout passes (dropout on "
            "at test time).",
        ]
    else:
        lines += [
            f"gap: {short} RMSE - train RMSE{named}, in target units.",
            f"{short} NLL: Gaussian -log density of the {rows} with the training residual variance; "
            "lower is better.",
            "MC RMSE / MC NLL: the same with the MC-dropout mean and variance (dropout on at test time).",
        ]
    return "\n".join(lines)


class Progress:
    """Progress of a sweep on ``stream``: a tqdm bar on a terminal, a few plain lines otherwise.

    A log file or a CI console gets one line per seed (runs done, seconds so far) instead of
    thousands of carriage returns. Use it as a context manager; call :meth:`start_run` before a
    run and :meth:`epoch_done` after each epoch.

    Args:
        seeds: number of seeds. rates: number of rates per seed. epochs: epochs per run.
        stream: where to write (normally ``sys.stderr``).
        enabled: False writes nothing.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(2, 1, 3, out) as bar:
        ...     for seed in (0, 1):
        ...         bar.start_run(seed, 0.5)
        ...         for _ in range(3):
        ...             bar.epoch_done()
        >>> [line.split(",")[0] for line in out.getvalue().splitlines()]
        ['dropkit: seed 0 done (1 of 2 runs', 'dropkit: seed 1 done (2 of 2 runs']
    """

    def __init__(self, seeds: int, rates: int, epochs: int, stream: TextIO, *, enabled: bool = True) -> None:
        for name, value in (("seeds", seeds), ("rates", rates), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.rates, self.epochs, self.total = rates, epochs, seeds * rates
        self.stream, self.enabled = stream, enabled
        self.runs = self.epochs_in_run = 0
        self.seed: int | None = None
        self.start = time.monotonic()
        is_tty = getattr(stream, "isatty", None)
        self.bar = None
        if enabled and is_tty is not None and is_tty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total * epochs, unit="epoch", desc="dropkit", file=stream,
                            dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def start_run(self, seed: int, p: float) -> None:
        """Announce the run of ``seed`` at rate ``p``."""
        self.seed, self.epochs_in_run = seed, 0
        if self.bar is not None:
            self.bar.set_postfix_str(f"seed={seed} p={p:g}")

    def epoch_done(self) -> None:
        """Count one epoch; after the last epoch of a seed's last rate, write that seed's line."""
        self.epochs_in_run += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.epochs_in_run < self.epochs:
            return
        self.runs += 1
        if self.enabled and self.bar is None and self.runs % self.rates == 0:
            seconds = time.monotonic() - self.start
            print(f"dropkit: seed {self.seed} done ({self.runs} of {self.total} runs, {seconds:.0f} s)",
                  file=self.stream, flush=True)


def _figure_html(out: Path, name: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}"></figure>'


def write_index_html(out: Path, title: str, table: str, notes: str, reading_text: str,
                     figures: Sequence[str]) -> Path:
    """Write ``out/index.html``: the table, its legend, the reading and the figures on one page.

    The page is self-contained: the PNG figures (files in ``out``) are embedded as base64, so it
    opens from the file system, moved or mailed, with no server and nothing else beside it.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> page = write_index_html(d, "demo", "p  acc", "p: rate", "p=0.5 helps.", [])
        >>> "<pre>p  acc</pre>" in page.read_text()
        True
    """
    body = "\n".join([
        f"<h1>{html.escape(title)}</h1>",
        f"<pre>{html.escape(table)}</pre>",
        f"<pre class=\"notes\">{html.escape(notes)}</pre>",
        f"<p><strong>Reading:</strong> {html.escape(reading_text)}</p>",
        *(_figure_html(out, name) for name in figures),
    ])
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
pre {{ background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }}
pre.notes {{ background: none; color: #444; white-space: pre-wrap; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
