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
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dropkit.app.errors import DataError
from dropkit.rng import derive_seed, philox_words

__all__ = [
    "DataError",
    "Dataset",
    "Standardizer",
    "load_embedded",
    "load_file",
    "load_features",
    "permutation",
    "shape_note",
    "stratified_split",
]

EXTENSIONS = (".csv", ".npz")
# An integer-valued target with more distinct values than this is as likely a count to regress
# as a label, so the task must be given explicitly.
MAX_INFERRED_CLASSES = 20
# A regression target is standardized and its variance reported; beyond this its square overflows.
REGRESSION_TARGET_LIMIT = 1e150


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
        if len(groups) > 1 and all(len(g) == 1 for g in groups):
            raise DataError(f"each of the {len(groups)} classes has a single row, so no class can have rows "
                            "both for training and held out; every class needs at least 2 rows")
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
        """Fit on training rows ``x`` of shape ``(N, F)``.

        Columns of extreme magnitude (such as 1e300, whose square overflows, or 1e-300, whose
        square underflows to 0) are fitted on ``x / m`` with ``m`` the column's largest absolute
        value, so their statistics stay finite and exact.
        """
        # The spread is taken around the first row (std does not depend on a shift): numpy's
        # rounded mean of [2**53, 2**53 + 2] is 2**53, which would make the std sqrt(2), not 1.
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            first = x[:1]
            mean, std = x.mean(axis=0), (x - first).std(axis=0)
            magnitude = np.abs(x).max(axis=0) if len(x) else np.zeros(x.shape[1:])
            bad = ~(np.isfinite(mean) & np.isfinite(std)) | (magnitude > 1e150) | (
                (magnitude < 1e-150) & (magnitude > 0))
            if bad.any():
                m = np.where(magnitude[bad] > 0, magnitude[bad], 1.0)
                scaled = x[:, bad] / m
                mean[bad] = scaled.mean(axis=0) * m
                std[bad] = (scaled - scaled[:1]).std(axis=0) * m
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale ``x`` of shape ``(N, F)``; the result is finite for finite ``x`` or a DataError is raised."""
        with np.errstate(over="ignore", invalid="ignore"):
            z = (x - self.mean) / self.std
            bad = ~np.isfinite(z)
            if bad.any():  # x - mean overflowed: divide first
                z = np.where(bad, x / self.std - self.mean / self.std, z)
        if not np.isfinite(z).all():
            cols = np.flatnonzero(~np.isfinite(z).all(axis=0)).tolist()
            raise DataError(f"feature column(s) {cols} are too far from the training rows to standardize "
                            "in float64")
        return z

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


# A number as people write it in a CSV: no underscores, no other scripts' digits (float() accepts
# both), and the words nan and inf, which the finiteness check then reports.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")
# Beyond 2**53 float64 cannot tell neighbouring integers apart, so labels there are not exact.
EXACT_INTEGER_LIMIT = 2**53


def _to_float(cells: list[str]) -> np.ndarray | None:
    """Parse a column; empty cells become NaN. None if any cell is not a number."""
    stripped = [c.strip() for c in cells]
    if not all(not c or _NUMBER.fullmatch(c) for c in stripped):
        return None
    return np.array([float(c) if c else math.nan for c in stripped], dtype=np.float64)


def _to_target(cells: list[str]) -> np.ndarray | list[str]:
    """A label column: integers kept exact (Python ints in an object array beyond 2**53), other
    numbers as float64, anything else as text."""
    stripped = [c.strip() for c in cells]
    if all(_INTEGER.fullmatch(c) for c in stripped):
        values = [int(c) for c in stripped]
        if max(abs(v) for v in values) > EXACT_INTEGER_LIMIT:
            return np.array(values, dtype=object)
        return np.array(values, dtype=np.float64)
    numeric = _to_float(cells)
    return numeric if numeric is not None else stripped


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
        y = _to_target(columns[target])
        if isinstance(y, list) and "" in y:
            # An empty cell in a text column is a missing label, not a class named "".
            empty = [line for line, label in enumerate(y, start=2) if not label]
            shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            raise DataError(f"{path}: empty label in {len(empty)} row(s) of {target!r}: lines {shown}")
    float_y = isinstance(y, np.ndarray) and y.dtype.kind == "f"
    check = np.concatenate([x, y[:, None]], axis=1) if float_y else x  # type: ignore[index]
    _check_finite(path, check, names + ([target] if float_y else []), "lines", 2)  # type: ignore[list-item]
    return x, y, names


def _npz_member(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read one ``.npy`` member of an archive, checking its header before allocating anything.

    The array's declared size must fit in the member's declared uncompressed size, so a few
    corrupted header bytes cannot make the reader allocate terabytes; object arrays (pickles)
    are refused by name, never loaded.
    """
    info = archive.getinfo(name)
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = header(f)
        if dtype.hasobject:
            raise DataError(f"{path}: array {name[:-4]!r} holds Python objects, which dropkit never "
                            "unpickles; store plain numbers or strings")
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise DataError(f"{path}: array {name[:-4]!r} is truncated or corrupted (its header declares "
                            f"shape {shape}, more than the archive holds)")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_npz(path: Path, wanted: list[str]) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            missing = [k for k in wanted if k not in names]
            if missing:
                raise DataError(f"{path}: needs arrays {' and '.join(wanted)}; "
                                f"it has: {', '.join(names) or 'none'}")
            return {k: _npz_member(path, archive, f"{k}.npy") for k in wanted}
    except DataError:
        raise
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a readable .npz archive, or a damaged one ({e})") from None
    except MemoryError:
        raise DataError(f"{path}: an array is too large for the memory available") from None
    except (OSError, EOFError, ValueError, KeyError, zlib.error, NotImplementedError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in first or "pickle" in first.lower():
            first = "it holds pickled Python objects, which dropkit never loads"
        raise DataError(f"{path}: the archive is truncated or corrupted ({first})") from None


def _load_npz(path: Path, need_y: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    wanted = ["X", "y"] if need_y else ["X"]
    arrays = _read_npz(path, wanted)
    x = arrays["X"]
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be a 2-D numeric array, got shape {x.shape} of dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{path}: X has shape {x.shape}; it needs at least one row and one column")
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float64)
    names = [f"x{j}" for j in range(x.shape[1])]
    y = arrays.get("y") if need_y else None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path}: y must have shape ({len(x)},) to match X, got {y.shape}")
        if y.dtype.kind not in "biufUS":
            raise DataError(f"{path}: y must hold numbers or strings, got dtype {y.dtype}")
    _check_finite(path, x, names, "rows (0-based)", 0)
    if y is not None and y.dtype.kind == "f":
        _check_finite(path, y[:, None].astype(np.float64), ["y"], "rows (0-based)", 0)
    return x, y, names


def _infer_task(path: Path, y: np.ndarray | list[str], task: str | None) -> str:
    if task is not None:
        return task
    if isinstance(y, list) or y.dtype.kind in "USb":
        return "classification"
    if y.dtype.kind == "O":  # exact integers beyond 2**53
        distinct = len(set(y.tolist()))
    else:
        values = np.unique(y)
        if np.any(values != np.round(values)):
            return "regression"
        distinct = len(values)
    if distinct <= MAX_INFERRED_CLASSES:
        return "classification"
    raise DataError(f"{path}: the target has {distinct} distinct integer values; "
                    "say --task classification or --task regression")


def _class_labels(path: Path, target: str, y: np.ndarray | list[str]) -> tuple[list[str], np.ndarray]:
    """Map labels to indices ``0..C-1`` in sorted order, keeping every label exact."""
    if isinstance(y, list) or y.dtype.kind == "O":
        values = y if isinstance(y, list) else y.tolist()
        classes = sorted(set(values))
        index = {c: i for i, c in enumerate(classes)}
        return [str(c) for c in classes], np.array([index[v] for v in values], dtype=np.int64)
    labels = np.asarray(y)
    if labels.dtype.kind == "f":
        if np.any(labels != np.round(labels)):
            raise DataError(f"{path}: classification needs integer or text labels; {target!r} has fractions")
        big = labels[np.abs(labels) > EXACT_INTEGER_LIMIT]
        if len(big):
            raise DataError(f"{path}: label {big[0]:g} in {target!r} is beyond 2**53, where floating-point "
                            "numbers cannot tell neighbouring integers apart; write the labels as integers "
                            "or text")
        labels = labels.astype(np.int64)
    classes, index = np.unique(labels, return_inverse=True)
    return [str(c) for c in classes.tolist()], index.astype(np.int64)


def _regression_target(path: Path, target: str, y: np.ndarray | list[str]) -> np.ndarray:
    if isinstance(y, list) or y.dtype.kind in "US":
        raise DataError(f"{path}: regression needs a numeric target, {target!r} holds text")
    values = np.asarray([float(v) for v in y.tolist()] if y.dtype.kind == "O" else y, dtype=np.float64)
    largest = float(np.abs(values).max())
    if largest > REGRESSION_TARGET_LIMIT:
        raise DataError(f"{path}: target {target!r} reaches {largest:g}; beyond "
                        f"{REGRESSION_TARGET_LIMIT:g} its variance overflows float64, so rescale it "
                        "(for instance to log units)")
    return values


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
        return Dataset(x, _regression_target(path, target, y), task, names, target)
    classes, index = _class_labels(path, target, y)
    if len(classes) < 2:
        raise DataError(f"{path}: classification needs at least 2 classes; {target!r} has only "
                        f"{len(classes)} ({', '.join(classes)})")
    return Dataset(x, index, task, names, target, classes)


def shape_note(data: Dataset, path: str | Path) -> str | None:
    """A note when the data has fewer rows than feature columns, else None.

    With fewer rows than columns the MLP can fit any labels, so the sweep mostly measures noise;
    more rows, or fewer columns, are what the user can do about it.

    Example:
        >>> d = Dataset(np.zeros((5, 200)), np.arange(5) % 2, "classification", [f"c{i}" for i in range(200)],
        ...             "y", ["0", "1"])
        >>> shape_note(d, "d.csv").split(":")[0]
        'd.csv has 5 rows and 200 feature columns'
    """
    rows, columns = data.x.shape
    if rows >= columns:
        return None
    return (f"{path} has {rows} rows and {columns} feature columns: with fewer rows than columns the model "
            "can fit any labels, so expect the results to be mostly noise")


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
