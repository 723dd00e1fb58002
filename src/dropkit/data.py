"""Data for the ``dropkit`` command: embedded scikit-learn sets, user CSV/NPZ files, splits, scaling.

Every problem a user can cause with a file (missing, wrong extension, absent target column,
text in a feature column, NaN/inf, a single class) raises :class:`DataError`, a ValueError whose
one-line message says what is wrong and where; the command prints it and exits with code 2.

Random choices (the split, the shuffling of minibatches) come from dropkit's Philox stream
through :func:`permutation`, so a split is a pure function of ``(seed, names)`` on every machine.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dropkit.rng import derive_seed, philox_words

__all__ = [
    "DataError",
    "Dataset",
    "Standardizer",
    "load_embedded",
    "load_file",
    "load_features",
    "permutation",
    "stratified_split",
]

EXTENSIONS = (".csv", ".npz")
# An integer-valued target with more distinct values than this is as likely a count to regress
# as a label, so the task must be given explicitly.
MAX_INFERRED_CLASSES = 20


class DataError(ValueError):
    """A problem with the user's data or files; its message is one line meant for the user."""


@dataclass
class Dataset:
    """Features and targets of one data set, ready for training.

    Attributes:
        x: float64 features, shape ``(N, F)``.
        y: int64 class indices in ``[0, C)`` (classification) or float64 values (regression),
            shape ``(N,)``.
        task: "classification" or "regression".
        feature_names: the ``F`` column names.
        target: name of the target column.
        classes: the original label of each class index (classification only).

    Example:
        >>> d = Dataset(np.zeros((3, 2)), np.array([0, 1, 0]), "classification", ["a", "b"], "y", ["0", "1"])
        >>> d.num_outputs
        2
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    feature_names: list[str]
    target: str
    classes: list[str] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        """Output units a model needs: the number of classes, or 1 for regression."""
        return len(self.classes) if self.task == "classification" else 1


def permutation(n: int, seed: int, *names: str | int) -> np.ndarray:
    """A permutation of ``range(n)`` drawn from the Philox stream ``derive_seed(seed, *names)``.

    The indices are sorted by one 32-bit stream word each (a stable sort, so ties keep index
    order); the result depends only on ``(n, seed, names)``.

    Shape:
        Output: ``(n,)`` int64.

    Example:
        >>> sorted(permutation(5, 0, "split").tolist())
        [0, 1, 2, 3, 4]
    """
    words = philox_words(derive_seed(seed, *names), 0, n).numpy()
    return np.argsort(words, kind="stable")


def stratified_split(
    y: np.ndarray, fraction: float | None = None, *, size: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train, held-out), keeping class proportions in both parts.

    Each class c with ``n_c`` members sends ``round(n_c * k / N)`` of them to the training part,
    where ``k = size`` or ``k = N * (1 - fraction)``; every class with two or more members keeps
    at least one in each part. ``y`` of floats (regression) is split without strata.

    Args:
        y: labels, shape ``(N,)``.
        fraction: share of samples held out (validation or test), in (0, 1).
        size: number of training samples instead of ``fraction``.
        seed: selects the split (stream ``derive_seed(seed, "split", c)`` for class ``c``).

    Shape:
        Output: two int64 index arrays whose lengths add up to ``N``.

    Example:
        >>> train, held = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5)
        >>> len(train), len(held), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[held].tolist())
        (4, 4, [0, 0, 1, 1])
    """
    n = len(y)
    if (fraction is None) == (size is None):
        raise ValueError("give exactly one of fraction and size")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction!r}")
    if size is not None and not 0 < size < n:
        raise DataError(f"the training size must be between 1 and {n - 1} (the data has {n} rows), "
                        f"got {size}")
    keep = size / n if size is not None else 1.0 - fraction  # type: ignore[operator]
    groups = [np.arange(n)] if y.dtype.kind == "f" else [np.flatnonzero(y == c) for c in np.unique(y)]
    train, held = [], []
    for c, idx in enumerate(groups):
        idx = idx[permutation(len(idx), seed, "split", c)]
        k = int(round(len(idx) * keep))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        train.append(idx[:k])
        held.append(idx[k:])
    train_idx, held_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
    if len(train_idx) == 0 or len(held_idx) == 0:
        raise DataError(f"{n} rows are too few to hold some out: the split leaves {len(train_idx)} for "
                        f"training and {len(held_idx)} held out")
    return train_idx, held_idx


@dataclass
class Standardizer:
    """Feature scaling ``z = (x - mean) / std`` with statistics of the training rows only.

    A constant column has ``std = 0``; it is kept at ``std = 1`` so that it maps to 0 instead
    of NaN.

    Shape:
        ``mean`` and ``std``: ``(F,)``; :meth:`transform`: ``(N, F) -> (N, F)``.

    Example:
        >>> s = Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
        >>> s.transform(np.array([[2.0, 5.0]])).tolist()
        [[0.0, 0.0]]
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Fit on training rows ``x`` of shape ``(N, F)``."""
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale ``x`` of shape ``(N, F)``."""
        return (x - self.mean) / self.std

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Plain float64 tensors, for a checkpoint that loads with ``weights_only=True``."""
        return {"mean": torch.from_numpy(np.asarray(self.mean, dtype=np.float64)),
                "std": torch.from_numpy(np.asarray(self.std, dtype=np.float64))}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor]) -> Standardizer:
        """Inverse of :meth:`to_tensors`."""
        return cls(state["mean"].double().numpy(), state["std"].double().numpy())


def load_embedded(name: str) -> Dataset:
    """One of scikit-learn's bundled data sets (no download): "digits" or "diabetes".

    Example:
        >>> load_embedded("digits").x.shape
        (1797, 64)
    """
    from sklearn import datasets  # imported here: only the demo needs scikit-learn

    if name == "digits":
        bunch = datasets.load_digits()
        classes = [str(c) for c in bunch.target_names]
        return Dataset(bunch.data.astype(np.float64), bunch.target.astype(np.int64), "classification",
                       [f"pixel_{i}" for i in range(bunch.data.shape[1])], "digit", classes)
    if name == "diabetes":
        bunch = datasets.load_diabetes()
        return Dataset(bunch.data.astype(np.float64), bunch.target.astype(np.float64), "regression",
                       list(bunch.feature_names), "progression")
    raise DataError(f"unknown embedded data set {name!r}; choose 'digits' or 'diabetes'")


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        raise DataError(f"{path}: unknown extension {path.suffix or '(none)'!r}; use .csv or .npz")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs write before the header.
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header line and at least one data row")
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"{path}: the header repeats column name(s) {', '.join(map(repr, repeated))}; "
                        "each column needs its own name")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
    return header, rows[1:]


def _to_float(cells: list[str]) -> np.ndarray | None:
    """Parse a column; empty cells become NaN. None if any cell is not a number."""
    try:
        return np.array([float(c) if c.strip() else math.nan for c in cells], dtype=np.float64)
    except ValueError:
        return None


def _check_finite(path: Path, x: np.ndarray, names: list[str], row_label: str, first_row: int) -> None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
    shown = ", ".join(str(r + first_row) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise DataError(f"{path}: NaN or inf (or an empty cell) in {len(rows)} row(s): {row_label} {shown}; "
                    f"column(s): {', '.join(cols)}")


def _load_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray | list[str] | None, list[str]]:
    header, rows = _read_csv(path)
    if target is not None and target not in header:
        raise DataError(f"{path}: no column {target!r}; the columns are: {', '.join(header)}")
    columns = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    names = [h for h in header if h != target]
    parsed = {name: _to_float(columns[name]) for name in names}
    text = [name for name in names if parsed[name] is None]
    if text:
        raise DataError(f"{path}: non-numeric feature column(s): {', '.join(text)}")
    if not names:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    x = np.stack([parsed[name] for name in names], axis=1)
    y: np.ndarray | list[str] | None = None
    if target is not None:
        numeric = _to_float(columns[target])
        y = numeric if numeric is not None else [c.strip() for c in columns[target]]
        if isinstance(y, list) and "" in y:
            # An empty cell in a text column is a missing label, not a class named "".
            empty = [line for line, label in enumerate(y, start=2) if not label]
            shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            raise DataError(f"{path}: empty label in {len(empty)} row(s) of {target!r}: lines {shown}")
    check = x if not isinstance(y, np.ndarray) else np.concatenate([x, y[:, None]], axis=1)
    _check_finite(path, check, names + ([target] if isinstance(y, np.ndarray) else []), "lines", 2)
    return x, y, names


def _load_npz(path: Path, need_y: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as e:
        raise DataError(f"{path}: not a plain-array .npz file ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    wanted = ["X", "y"] if need_y else ["X"]
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise DataError(f"{path}: needs arrays {' and '.join(wanted)}; it has: {', '.join(arrays) or 'none'}")
    x = arrays["X"]
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be a 2-D numeric array, got shape {x.shape} of dtype {x.dtype}")
    x = x.astype(np.float64)
    names = [f"x{j}" for j in range(x.shape[1])]
    y = arrays.get("y") if need_y else None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path}: y must have shape ({len(x)},) to match X, got {y.shape}")
        if y.dtype.kind not in "biufUS":
            raise DataError(f"{path}: y must hold numbers or strings, got dtype {y.dtype}")
    check = x if y is None or y.dtype.kind in "US" else np.concatenate([x, y[:, None].astype(np.float64)], 1)
    _check_finite(path, check, names + (["y"] if check.shape[1] > x.shape[1] else []), "rows (0-based)", 0)
    return x, y, names


def _infer_task(path: Path, y: np.ndarray | list[str], task: str | None) -> str:
    if task is not None:
        return task
    if isinstance(y, list) or y.dtype.kind in "USb":
        return "classification"
    values = np.unique(y)
    if np.any(values != np.round(values)):
        return "regression"
    if len(values) <= MAX_INFERRED_CLASSES:
        return "classification"
    raise DataError(f"{path}: the target has {len(values)} distinct integer values; "
                    "say --task classification or --task regression")


def load_file(path: str | Path, target: str | None = None, task: str | None = None) -> Dataset:
    """Load a user's CSV (with header; ``target`` names the label column) or NPZ (arrays X, y).

    The task is inferred when unambiguous: text labels or at most 20 distinct integer values
    mean classification, non-integer values mean regression. Classification labels are mapped to
    indices ``0..C-1`` in sorted order. Nothing is unpickled (``np.load(allow_pickle=False)``).

    Raises:
        DataError: with a one-line message for every problem listed in the module docstring.

    Shape:
        ``x``: ``(N, F)``; ``y``: ``(N,)``.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(f, "w").write("a,b,label\\n1,2,cat\\n3,4,dog\\n")
        >>> d = load_file(f, target="label")
        >>> d.x.shape, d.y.tolist(), d.classes, d.task
        ((2, 2), [0, 1], ['cat', 'dog'], 'classification')
    """
    path = _check_path(path)
    if task not in (None, "classification", "regression"):
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    if path.suffix.lower() == ".csv":
        if target is None:
            raise DataError(f"{path}: a CSV file needs --target COLUMN (the label column)")
        x, y, names = _load_csv(path, target)
    else:
        x, y, names = _load_npz(path, need_y=True)
        target = "y"
    assert y is not None
    task = _infer_task(path, y, task)
    if task == "regression":
        if isinstance(y, list) or y.dtype.kind in "US":
            raise DataError(f"{path}: regression needs a numeric target, {target!r} holds text")
        return Dataset(x, np.asarray(y, dtype=np.float64), task, names, target)
    labels = np.asarray(y)
    if labels.dtype.kind == "f":
        if np.any(labels != np.round(labels)):
            raise DataError(f"{path}: classification needs integer or text labels; {target!r} has fractions")
        labels = labels.astype(np.int64)
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path}: classification needs at least 2 classes; {target!r} has only "
                        f"{len(classes)} ({', '.join(map(str, classes))})")
    return Dataset(x, index.astype(np.int64), task, names, target, [str(c) for c in classes])


def load_features(path: str | Path, feature_names: list[str]) -> np.ndarray:
    """Load the feature matrix of a file to predict on, checking it has the model's features.

    A CSV must have every column in ``feature_names`` (extra columns, such as the target, are
    ignored); an NPZ needs an array X with ``len(feature_names)`` columns.

    Shape:
        Output: ``(N, F)`` float64 with ``F = len(feature_names)``.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(f, "w").write("b,a\\n1,2\\n")
        >>> load_features(f, ["a", "b"]).tolist()
        [[2.0, 1.0]]
    """
    path = _check_path(path)
    if path.suffix.lower() == ".npz":
        x, _, _ = _load_npz(path, need_y=False)
        if x.shape[1] != len(feature_names):
            raise DataError(f"{path}: X has {x.shape[1]} columns, the model expects {len(feature_names)}")
        return x
    header, rows = _read_csv(path)
    missing = [n for n in feature_names if n not in header]
    if missing:
        raise DataError(f"{path}: missing feature column(s) {', '.join(missing)}; "
                        f"the columns are: {', '.join(header)}")
    columns = {n: _to_float([r[header.index(n)] for r in rows]) for n in feature_names}
    text = [n for n, col in columns.items() if col is None]
    if text:
        raise DataError(f"{path}: non-numeric feature column(s): {', '.join(text)}")
    x = np.stack([columns[n] for n in feature_names], axis=1)
    _check_finite(path, x, feature_names, "lines", 2)
    return x
