"""Fuzzing the CSV and NPZ loaders with hypothesis: random bytes, delimiters, numeric extremes,
shapes and damaged archives.

The property, for every input: :func:`load_file` either raises :class:`DataError` (a ValueError
with a one-line message) or returns exactly what the file says, with no warning. Anything
else, another exception, a warning, or data that differs from what was written, is a failure.
"""

from __future__ import annotations

import io
import math
import statistics
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropkit.app.data import DataError, Standardizer, load_features, load_file

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FOLDER = Path(tempfile.mkdtemp(prefix="dropkit-fuzz-"))

EXTREMES = [0.0, -0.0, 1.0, -1.0, 1e-300, -1e-300, 5e-324, 1e300, -1e300, 1.7976931348623157e308,
            -1.7976931348623157e308, 2.0**53, 2.0**53 + 2, 1e19]
numbers = st.one_of(st.sampled_from(EXTREMES), st.floats(allow_nan=False, allow_infinity=False),
                    st.integers(-(10**6), 10**6).map(float))


def load(name: str, data: bytes, **kwargs: object) -> object:
    """load_file on ``data`` written to ``name``: DataError or a result, never anything else."""
    path = FOLDER / name
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return load_file(path, **kwargs)  # type: ignore[arg-type]
        except DataError as e:
            message = str(e)
            assert message and "\n" not in message and "allow_pickle" not in message
            return e


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["f.csv", "f.npz"]))
def test_random_bytes(data, name):
    result = load(name, data, target="label")
    if not isinstance(result, DataError):  # the bytes happened to be a valid file: it must be sane
        assert np.isfinite(result.x).all() and result.x.shape[0] == len(result.y) > 0


def _cell(value: float, style: str) -> str:
    value = float(value)  # a numpy scalar's repr is "np.float64(...)"
    if style == "repr":
        return repr(value)
    if style == "e":
        return f"{value:.17e}"
    return f" {value!r} "  # spaces around a number are allowed


@FUZZ
@given(rows=st.integers(1, 12), cols=st.integers(1, 4), delimiter=st.sampled_from([",", ";", "\t", "|", " "]),
       style=st.sampled_from(["repr", "e", "spaced"]), data=st.data())
def test_numeric_csv_round_trips_or_is_refused(rows, cols, delimiter, style, data):
    n = rows * cols
    values = np.array(data.draw(st.lists(numbers, min_size=n, max_size=n))).reshape(rows, cols)
    names = st.sampled_from(["0", "1", "2", "10000000000000000001", "cat"])
    labels = data.draw(st.lists(names, min_size=rows, max_size=rows))
    header = delimiter.join([f"c{j}" for j in range(cols)] + ["label"])
    lines = [delimiter.join([_cell(v, style) for v in row] + [label]) for row, label in zip(values, labels,
                                                                                           strict=True)]
    result = load("n.csv", ("\n".join([header, *lines]) + "\n").encode(), target="label")
    if delimiter != ",":  # one column named "c0;c1;...;label": there is no column "label"
        assert isinstance(result, DataError) and "no column 'label'" in str(result)
        return
    canonical = [str(int(label)) if label.isdigit() else label for label in labels]
    if isinstance(result, DataError):  # the only reason left: a single class
        assert len(set(canonical)) < 2 and "at least 2 classes" in str(result), result
        return
    assert np.array_equal(result.x, values)  # every number exactly as written, extremes included
    # Labels are kept exact: the class of each row is its label, compared as text.
    assert [result.classes[i] for i in result.y] == canonical


@FUZZ
@given(rows=st.integers(0, 6), cols=st.integers(0, 4),
       dtype=st.sampled_from(["float64", "float32", "int64", "uint8", "bool", "float16", "complex64"]),
       cut=st.one_of(st.none(), st.integers(0, 2000)), flips=st.lists(st.integers(0, 4000), max_size=3),
       data=st.data())
def test_npz_round_trips_or_is_refused(rows, cols, dtype, cut, flips, data):
    raw = np.array(data.draw(st.lists(numbers, min_size=rows * cols, max_size=rows * cols)), dtype=np.float64)
    with np.errstate(all="ignore"):
        x = raw.reshape(rows, cols).astype(dtype)
    y = np.arange(rows) % 2
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=y)
    archive = bytearray(buffer.getvalue())
    if cut is not None:
        archive = archive[:cut]
    for i in flips:
        if i < len(archive):
            archive[i] ^= 0xFF
    damaged = bytes(archive) != buffer.getvalue()
    result = load("a.npz", bytes(archive))
    if isinstance(result, DataError):
        return
    # Accepted: it must be exactly what was written (a flip may land on a byte nothing reads, such
    # as a timestamp), never silently different data.
    assert dtype != "complex64" and rows >= 2 and cols >= 1
    with np.errstate(all="ignore"):
        expected = x.astype(np.float64)
    assert np.array_equal(result.x, expected) and np.array_equal(result.y, y), damaged


@FUZZ
@given(st.lists(st.sampled_from(EXTREMES), min_size=2, max_size=8), st.sampled_from(EXTREMES))
def test_standardizer_is_finite_and_matches_exact_arithmetic(column, shift):
    x = np.array(column)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = Standardizer.fit(x)
        # Independent: the statistics module computes in exact fractions, rounding once at the end.
        exact_std = statistics.pstdev(column)
        # The mean only matters relative to the spread: an error far below the std moves no z-score.
        exact_mean = statistics.mean(column)
        assert abs(scaler.mean[0] - exact_mean) <= 1e-9 * max(exact_std, abs(exact_mean)) + 1e-300
        assert scaler.std[0] == pytest.approx(exact_std if exact_std > 0 else 1.0, rel=1e-9, abs=1e-300)
        try:
            z = scaler.transform(np.array([[shift]]))
        except DataError:
            return
    assert np.isfinite(z).all()
    exact_z = (Fraction(shift) - Fraction(float(scaler.mean[0]))) / Fraction(float(scaler.std[0]))
    assert math.isclose(z[0, 0], float(exact_z), rel_tol=1e-9, abs_tol=1e-9)


@FUZZ
@given(st.binary(max_size=300))
def test_features_of_random_bytes(data):
    (FOLDER / "p.csv").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            x = load_features(FOLDER / "p.csv", ["a"])
        except DataError:
            return
    assert x.shape[1] == 1 and np.isfinite(x).all()
