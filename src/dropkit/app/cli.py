"""The ``dropkit`` command: measure what dropout does to a model, on digits or on your own data.

Commands: ``demo`` (digits, embedded), ``train`` (a CSV/NPZ file), ``predict`` (MC-dropout
predictions of a saved model) and ``bench`` (the kernel benchmark). Every mistake a user can
make with files or options ends in one line on stderr and exit code 2, never a traceback (the
errors it owns are in :mod:`dropkit.app.errors`); any other exception is a bug and shows as one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dropkit.app._limits import FLAG_LIMITS
from dropkit.app.errors import DataError, Parser, UsageError

if TYPE_CHECKING:
    import numpy as np

    from dropkit.app.data import Dataset
    from dropkit.app.training import RunResult

__all__ = ["main"]

DEFAULT_GRID = [0.0, 0.1, 0.2, 0.3, 0.5]
# The demo's default: the rates of Srivastava et al. (input 0.2, hidden 0.5) against none, on a
# model wide enough to overfit 150 digits (README: "Why the demo's model is wider than the guide's").
DEMO_GRID = [0.0, 0.2, 0.5]
DEMO_P_INPUT = 0.2
DEMO_HIDDEN = {"mlp": 256, "guide-mlp": 128, "cnn": 128}


class _Help(argparse.HelpFormatter):
    """Each option's default once, as "(default: X)"; "(required)" on required options.

    No default is shown where there is none (None), for on/off flags, or where the help text
    already says it; the description and epilog keep their paragraphs.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return text + " (required)"
        default = action.default
        shown = not (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                     or "default" in text or not action.option_strings)
        if shown:
            value = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(
                default, list) else (f"{default:g}" if isinstance(default, float) else str(default))
            text += f" (default: {value})"
        return text.replace("%", "%%")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Help, self)._fill_text(part, width, indent) for part in text.split("\n\n"))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _rate(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a dropout rate must be in [0, 1), got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _at_most(name: str, convert: Callable[[str], float]) -> Callable[[str], float]:
    """``convert``, then refuse values above ``FLAG_LIMITS[name]`` (argparse names the flag)."""
    limit = FLAG_LIMITS[name]

    def check(text: str) -> float:
        value = convert(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit:g}, got {text}")
        return value

    check.__name__ = convert.__name__  # argparse names the conversion in some messages
    return check


def _count(name: str) -> Callable[[str], float]:
    return _at_most(name, _positive)


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**63), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_output(parser: argparse.ArgumentParser, printed: str = "a table") -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress display and no notes on stderr")
    parser.add_argument("--json", action="store_true", help=f"print the results as JSON instead of {printed}")
    parser.add_argument("--threads", type=_count("threads"), default=1,
                        help="torch CPU threads (small models run fastest on one; at most the CPU count)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing outputs (never an input file)")


def _add_sweep(parser: argparse.ArgumentParser, *, epochs: int, lr: float, grid: list[float] = DEFAULT_GRID,
               p_input: float = 0.0, hidden: int | None = 128, hidden_help: str = "hidden width of the MLP"
               ) -> None:
    parser.add_argument("--p", type=_rate, nargs="+", default=grid, metavar="P",
                        help="dropout rate(s) after each hidden layer, each in [0, 1)")
    parser.add_argument("--p-input", "--input-p", dest="input_p", type=_rate, default=p_input,
                        help="input dropout rate of every run with p > 0 (p = 0 runs have no dropout at all)")
    parser.add_argument("--hidden", type=_count("hidden"), default=hidden, help=hidden_help)
    parser.add_argument("--epochs", type=_count("epochs"), default=epochs, help="training epochs per run")
    parser.add_argument("--batch-size", type=_count("batch_size"), default=32, help="minibatch size")
    parser.add_argument("--lr", type=_at_most("lr", _positive_float), default=lr, help="Adam learning rate")
    parser.add_argument("--seeds", type=_count("seeds"), default=5, help="number of seeds per rate")
    parser.add_argument("--seed", type=_seed, default=0, help="first seed; runs use seed, seed+1, ...")
    parser.add_argument("--mc-samples", type=_count("mc_samples"), default=30, help="MC-dropout passes T")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a new ./dropkit-runs/<timestamp>/)")


# Said in both commands' help and in docs/cli.md: why demo and train start from different settings.
DEFAULTS_DIFFER = (
    "demo and train differ in their defaults on purpose. demo is set up to show overfitting and "
    "its cure on 150 digits: a wide network (two hidden layers of 256), rates 0, 0.2 and 0.5 "
    "with input dropout 0.2 (the rates of Srivastava et al., 2014), 60 epochs at learning rate "
    "3e-3. train starts from a neutral setting for data it knows nothing about: the guide's MLP "
    "(one hidden layer of 128), rates 0, 0.1, 0.2, 0.3 and 0.5, no input dropout, 100 epochs at "
    "learning rate 1e-3. Every one of these can be set on either command."
)

PREDICT_COLUMNS = (
    "Output columns, one row per input row, from T = --mc-samples passes with dropout on. "
    "Classification: prediction, the class with the highest mean probability over the T "
    "passes; confidence, that mean probability; predictive_entropy, the entropy of the mean "
    "probabilities in nats (the total uncertainty); mutual_information, the predictive entropy "
    "minus the mean entropy of the single passes (the part of it that comes from the model's own "
    "uncertainty, epistemic; 0 for a model without dropout). "
    "Regression: prediction, the mean of the T passes in target units; variance, the variance "
    "of the T passes (the model's own uncertainty, epistemic, in squared target units; 0 for a "
    "model without dropout); total_variance, variance plus the noise variance of the training "
    "residuals (the predictive variance of a new observation: epistemic plus aleatoric)."
)


def _build_parser() -> argparse.ArgumentParser:
    from dropkit import __version__

    fmt = _Help
    parser = Parser(prog="dropkit", description="Measure what dropout does to a model.", formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"dropkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    demo = sub.add_parser(
        "demo", formatter_class=fmt, help="dropout sweep on scikit-learn's digits",
        description="Train a network with two hidden layers of 256 (--model mlp, the default) on 150 of "
        "scikit-learn's 1797 digits for a grid of dropout rates and seeds, and print and save what "
        "dropout changes: accuracy, the train-test gap, test NLL, calibration and MC dropout. "
        "--model guide-mlp is the guide's MLP (one hidden layer of 128), --model cnn the guide's CNN.",
        epilog=DEFAULTS_DIFFER)
    demo.add_argument("--train-size", type=_count("train_size"), default=150,
                      help="training rows (the rest of the 1797 digits are the test set)")
    demo.add_argument("--model", choices=list(DEMO_HIDDEN), default="mlp",
                      help="mlp: two hidden layers of 256; guide-mlp: the guide's MLP (one layer of 128); "
                      "cnn: the guide's CNN on the 8x8 images")
    _add_sweep(demo, epochs=60, lr=3e-3, grid=DEMO_GRID, p_input=DEMO_P_INPUT, hidden=None,
               hidden_help="hidden width (default: "
               + ", ".join(f"{width} for {name}" for name, width in DEMO_HIDDEN.items()) + ")")
    _add_output(demo)
    train = sub.add_parser(
        "train", formatter_class=fmt, help="dropout sweep on your CSV or NPZ file",
        description="The demo's sweep on your data, with the guide's MLP: a CSV with a header (--target "
        "names the label column) or an NPZ with arrays X and y. The rows held out are validation rows: "
        "they choose the rate that --save keeps.",
        epilog=DEFAULTS_DIFFER)
    train.add_argument("--data", type=Path, required=True, help="a .csv or .npz file")
    train.add_argument("--target", default=None, help="label column of a CSV (required for a CSV)")
    train.add_argument("--task", choices=["classification", "regression"], default=None,
                       help="inferred from the target when unambiguous")
    train.add_argument("--val-fraction", type=_fraction, default=0.25,
                       help="share of rows held out (stratified) for validation")
    train.add_argument("--save", type=Path, default=None,
                       help="write one model here for dropkit predict: the first seed's run at the p with "
                       "the lowest validation NLL, or at --save-p")
    train.add_argument("--save-p", type=_rate, default=None, metavar="P",
                       help="the rate whose model --save keeps (one of --p); for MC-dropout uncertainty "
                       "choose a p > 0, as a p = 0 model has none")
    _add_sweep(train, epochs=100, lr=1e-3)
    _add_output(train)
    predict = sub.add_parser(
        "predict", formatter_class=fmt, help="MC-dropout predictions of a saved model",
        description="Per-row predictions of a model saved by dropkit train --save, with MC-dropout "
        "uncertainty, as CSV on stdout or in --output (or JSON with --json).",
        epilog=PREDICT_COLUMNS)
    predict.add_argument("--model", type=Path, required=True, help="a file written by dropkit train --save")
    predict.add_argument("--data", type=Path, required=True, help="a .csv or .npz file with the features")
    predict.add_argument("--mc-samples", type=_count("mc_samples"), default=30, help="MC-dropout passes T")
    predict.add_argument("--seed", type=_seed, default=0, help="seed of the MC-dropout masks")
    predict.add_argument("--output", type=Path, default=None,
                         help="write the CSV here instead of printing it (complete or not at all)")
    _add_output(predict, "CSV")
    sub.add_parser("bench", add_help=False, help="the CPU kernel benchmark (see dropkit bench --help)")
    return parser


def _default_out() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("dropkit-runs") / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path("dropkit-runs") / f"{stamp}-{n}"
    return path


def _check_sweep_memory(args: argparse.Namespace, rows: int, test_rows: int, features: int, outputs: int
                        ) -> None:
    from dropkit.app._limits import check_memory, sweep_bytes

    needed = sweep_bytes(rows, test_rows, features, outputs, args.hidden, args.batch_size, args.mc_samples)
    check_memory(needed, f"a run with --hidden {args.hidden}, --mc-samples {args.mc_samples} on "
                 f"{rows + test_rows} rows x {features} features")


def _sweep(
    args: argparse.Namespace, data: Dataset, split: Callable[[int], tuple[np.ndarray, np.ndarray]],
    *, model: str = "guide-mlp", one_scale: bool = False,
) -> tuple[list[RunResult], dict]:
    """Train every (seed, p) pair with one progress display; returns the runs and per-seed test labels.

    The p = 0 run of a seed is the model without any dropout; the runs with p > 0 also drop
    inputs at ``args.input_p``.
    """
    from dropkit.app.report import Progress
    from dropkit.app.training import TrainConfig, prepare, train_run

    base = TrainConfig(input_p=args.input_p, hidden=args.hidden, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, mc_samples=args.mc_samples, model=model)
    grid = sorted(set(args.p))
    seeds = [args.seed + i for i in range(args.seeds)]
    results, labels, prepared = [], {}, {}
    with Progress(len(seeds), len(grid), args.epochs, sys.stderr, enabled=not args.quiet) as progress:
        for seed in seeds:
            prepared[seed] = prepare(data, *split(seed), one_scale=one_scale)
            labels[seed] = prepared[seed].y_test
            for p in grid:
                progress.start_run(seed, p)
                config = replace(base, p=p, seed=seed, input_p=args.input_p if p > 0 else 0.0)
                results.append(train_run(prepared[seed], config, on_epoch=progress.epoch_done))
    extra = {"labels": labels, "prepared": prepared, "base": asdict(base), "grid": grid, "seeds": seeds}
    return results, extra


def _report(args: argparse.Namespace, results: list[RunResult], extra: dict, task: str, info: dict,
            out: Path, folder: Path) -> str:
    """Write the figures and results into ``folder`` (the staged copy of ``out``); return what to print.

    Nothing is printed here: the caller prints once the files are published, so a reader that
    closes the pipe early can never cost the results.
    """
    from dropkit.app.plots import write_plots
    from dropkit.app.report import format_table, legend, reading, write_index_html, write_results

    held_out = info.get("held_out", "test")
    text = reading(results, task, held_out)
    notes = legend(task, args.input_p, held_out=held_out, seeds=len(extra["seeds"]))
    info = {**info, "grid": extra["grid"], "seeds": extra["seeds"], "config": extra["base"], "reading": text}
    files = [p.name for p in write_plots(results, task, folder, extra["labels"])]
    written = files + ["results.json", "results.csv", "index.html"]
    doc = write_results(folder, results, task, {**info, "files": written})
    table = format_table(doc["summary"], task, held_out)  # type: ignore[arg-type]
    write_index_html(folder, _title(info), table, notes, text, files)
    if args.json:
        return json.dumps({k: v for k, v in doc.items() if k != "runs"} | {"out": str(out)}, indent=2)
    return "\n".join([table, notes, f"Reading: {text}",
                      f"Wrote {', '.join(files)}, results.json, results.csv and index.html to {out}"])


def _title(info: dict) -> str:
    if info["command"] == "demo":
        return f"dropkit demo: {info['model']} on {info['train_size']} digits"
    return f"dropkit train: {info['data']}"


def _demo(args: argparse.Namespace) -> int:
    from dropkit.app._io import Outputs
    from dropkit.app.data import load_embedded, stratified_split

    outputs = Outputs(inputs=[], force=args.force)
    out = outputs.folder(args.out or _default_out(), "--out")  # checked before the sweep, not after it
    data = load_embedded("digits")
    if args.train_size >= len(data.y) - len(data.classes):
        raise UsageError(f"--train-size must leave test rows: at most {len(data.y) - len(data.classes) - 1}, "
                        f"got {args.train_size}")
    if args.hidden is None:
        args.hidden = DEMO_HIDDEN[args.model]
    test_rows = len(data.y) - args.train_size
    _check_sweep_memory(args, args.train_size, test_rows, data.x.shape[1], data.num_outputs)
    if not args.quiet and not args.json:
        print(f"digits: {args.train_size} training rows, {test_rows} test rows; "
              f"model {args.model}; {len(set(args.p))} rates x {args.seeds} seeds x {args.epochs} epochs",
              file=sys.stderr)
    # The pixels share one scale (0-16 ink), so they are standardized together, not one by one.
    results, extra = _sweep(args, data, lambda s: stratified_split(data.y, size=args.train_size, seed=s),
                            model=args.model, one_scale=True)
    info = {"command": "demo", "data": "digits", "train_size": args.train_size, "model": args.model}
    with outputs.staged() as staged:
        printed = _report(args, results, extra, data.task, info, out, staged[out])
    args.published = True
    print(printed)
    return 0


def _train(args: argparse.Namespace) -> int:
    from dropkit.app._io import Outputs
    from dropkit.app.checkpoint import save_model
    from dropkit.app.data import load_file, shape_note, stratified_split

    outputs = Outputs(inputs=[args.data], force=args.force)
    if args.save_p is not None and args.save is None:
        raise DataError("--save-p chooses the rate whose model --save keeps; give --save too")
    if args.save_p is not None and args.save_p not in args.p:
        raise DataError(f"--save-p {args.save_p:g} is not one of the rates trained (--p "
                        f"{' '.join(f'{p:g}' for p in sorted(set(args.p)))})")
    out = outputs.folder(args.out or _default_out(), "--out")
    save = outputs.file(args.save, "--save") if args.save is not None else None
    data = load_file(args.data, args.target, args.task)
    held = max(1, round(len(data.y) * args.val_fraction))
    _check_sweep_memory(args, len(data.y) - held, held, data.x.shape[1], data.num_outputs)
    note = shape_note(data, args.data)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    results, extra = _sweep(args, data, lambda seed: stratified_split(data.y, args.val_fraction, seed=seed))
    info = {"command": "train", "data": str(args.data), "target": data.target, "rows": len(data.y),
            "features": data.feature_names, "classes": data.classes, "val_fraction": args.val_fraction,
            "held_out": "validation"}
    with outputs.staged() as staged:
        printed = _report(args, results, extra, data.task, info, out, staged[out])
        if save is not None:
            kept, why = _kept_rate(args, results, data.task)
            run = next(r for r in results if r.config.p == kept and r.config.seed == extra["seeds"][0])
            save_model(staged[save], run, data, extra["prepared"][run.config.seed])
    args.published = True
    print(printed)
    if save is not None and not args.quiet:
        print(f"Saved the p={kept:g} model (seed {run.config.seed}) to {save}: {why}", file=sys.stderr)
    return 0


def _kept_rate(args: argparse.Namespace, results: list[RunResult], task: str) -> tuple[float, str]:
    """The rate whose model ``train --save`` keeps, and why, in words for the saved-model line."""
    from dropkit.app.report import summarize

    if args.save_p is not None:
        return args.save_p, "chosen with --save-p"
    rows = summarize(results, task)
    best = min(rows, key=lambda row: row["test_nll"]["mean"])["p"]  # type: ignore
    why = "the rate with the lowest mean validation NLL"
    if best == 0 and len(rows) > 1:
        why += ("; a p = 0 model has no dropout, so dropkit predict gives it no MC-dropout uncertainty "
                "(--save-p keeps another rate)")
    return best, why  # type: ignore[return-value]


def _predict(args: argparse.Namespace) -> int:
    import torch

    from dropkit.app._io import Outputs
    from dropkit.app._limits import check_memory
    from dropkit.app.checkpoint import load_model
    from dropkit.app.data import load_features
    from dropkit.app.report import json_safe
    from dropkit.uncertainty import classification_summary, mc_predict, regression_summary

    outputs = Outputs(inputs=[args.model, args.data], force=args.force)
    output = outputs.file(args.output, "--output") if args.output is not None else None
    loaded = load_model(args.model)
    x = load_features(args.data, loaded.feature_names)
    hidden, classes = int(loaded.config["hidden"]), max(len(loaded.classes), 1)  # type: ignore[call-overload]
    check_memory(4 * args.mc_samples * len(x) * (x.shape[1] + 3 * hidden + 3 * classes),
                 f"--mc-samples {args.mc_samples} on {len(x)} rows")
    z = loaded.scaler.transform(x)
    far = [name for name, big in zip(loaded.feature_names, (abs(z) > 3e38).any(axis=0), strict=True) if big]
    if far:  # float32 would make them inf and every prediction NaN
        raise DataError(f"{args.data}: feature column(s) {', '.join(far[:5])} hold values too far from the "
                        "training rows for float32 after standardization")
    x = torch.from_numpy(z).float()
    if loaded.config["p"] == 0 and loaded.config["input_p"] == 0 and not args.quiet:
        print("note: this model has no dropout (p=0), so every MC pass is the same and the uncertainty is 0",
              file=sys.stderr)
    out = mc_predict(loaded.model, x, args.mc_samples, seed=args.seed)
    if loaded.task == "classification":
        s = classification_summary(torch.softmax(out, dim=-1))
        rows = [{"row": i, "prediction": loaded.classes[int(c)], "confidence": float(s.mean_probs[i, c]),
                 "predictive_entropy": float(s.predictive_entropy[i]),
                 "mutual_information": float(s.mutual_information[i])}
                for i, c in enumerate(s.predicted.tolist())]
    else:
        assert loaded.y_scaler is not None  # load_model checks that a regression model has one
        scale, shift = float(loaded.y_scaler.std[0]), float(loaded.y_scaler.mean[0])
        s = regression_summary(out[..., 0])
        rows = [{"row": i, "prediction": float(m) * scale + shift, "variance": float(v) * scale * scale,
                 "total_variance": float(v) * scale * scale + loaded.noise_variance}
                for i, (m, v) in enumerate(zip(s.mean.tolist(), s.epistemic_variance.tolist(), strict=True))]
    if args.json and output is None:
        print(json.dumps(json_safe(rows), indent=2))
        return 0
    if output is None:
        _write_csv(sys.stdout, rows)
        return 0
    with outputs.staged() as staged, open(staged[output], "w", newline="") as stream:
        _write_csv(stream, rows)
    args.published = True
    if not args.quiet:
        print(f"Wrote {len(rows)} predictions to {output}", file=sys.stderr)
    return 0


def _write_csv(stream: TextIO, rows: list[dict[str, object]]) -> None:
    import csv

    writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def _bench(argv: list[str]) -> int:
    from dropkit.app import bench  # imported here: it pulls in torch.compile machinery

    return int(bench.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dropkit`` command; returns the exit code.

    Example:
        >>> main(["demo", "--p", "1.5"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    from dropkit.app._streams import guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    # A closed stdout or stderr never costs a result: writes to a reader that went away are
    # dropped and the command ends with 141 (or 129 after SIGHUP) once its files are published.
    with guarded() as guard:
        try:
            code = _run(argv)
        except SystemExit as e:  # --help, --version and usage errors, from argparse
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            raise SystemExit(guard.exit_code(code)) from None
        return guard.exit_code(code)


def _run(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _build_parser().parse_args(argv)
    handler = {"demo": _demo, "train": _train, "predict": _predict}[args.command]
    try:
        import torch

        torch.set_num_threads(args.threads)
        return handler(args)
    # The errors the command owns, and the machine's (a file it cannot write, memory it cannot
    # get); anything else, a ValueError from the library included, is a bug and shows as one.
    except (UsageError, DataError, OSError, MemoryError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"dropkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = "the results were written" if getattr(args, "published", False) else "nothing was written"
        print(f"dropkit {args.command}: interrupted; {done}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
