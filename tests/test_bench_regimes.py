"""benchmarks/regimes.py at its smallest: both regimes, 1 and 2 threads, both modes, the JSON it
writes, and ratios that are the per-round quotients of the times it measured (never a timing).
Four members run (one per kind of kernel); every member is listed."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL = ["Dropout", "AlphaDropout", "FeatureAlphaDropout", "GaussianDropout", "GaussianNoise", "DropPath",
           "StochasticDepth", "Dropout1d", "Dropout2d", "Dropout3d", "LockedDropout", "DropBlock2d",
           "DropBlock3d"]
MEMBERS = ["Dropout", "DropPath", "LockedDropout", "DropBlock2d"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("regimes") / "regimes.json"
    # its own process: the benchmark sets glibc's allocator parameters for its regimes
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "regimes.py"), "--quick", "--sizes", "12",
         "--cold-size", "17", "--rounds", "2", "--budget", "0", "--threads", "1,2",
         "--members", ",".join(MEMBERS), "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.read_text())


def test_every_tensor_input_layer_is_a_member():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import regimes
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert [m.name for m in regimes.MEMBERS] == ALL


def test_every_member_in_every_regime_thread_count_and_mode(result):
    seen = {(r["member"], r["regime"], r["threads"], r["mode"]) for r in result["rows"]}
    assert seen == {(m, regime, t, mode) for m in MEMBERS for regime in ("warm", "cold") for t in (1, 2)
                    for mode in ("fwd", "fwd+bwd")}
    for r in result["rows"]:
        assert r["numel"] == (2**12 if r["regime"] == "warm" else 2**17)
        assert r["numel"] == eval("*".join(map(str, r["shape"])))  # noqa: S307 - a product of ints
    meta = result["meta"]
    assert meta["rounds"] == 2 and meta["sizes_log2"] == [12] and meta["cold_log2"] == 17
    if sys.platform == "linux":
        assert meta["warm_allocator_pinned"] and meta["cold_allocator_pinned"]


def test_ratios_are_computed_from_the_measured_times(result):
    for r in result["rows"]:
        times = r["times_s"]
        assert set(times) == {"dropkit", "torch", "clone"}
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())
        for key, num, den in (("ratio_torch", "dropkit", "torch"), ("ratio_clone", "dropkit", "clone"),
                              ("torch_over_clone", "torch", "clone")):
            per_round = sorted(a / b for a, b in zip(times[num], times[den], strict=True))
            assert r[key]["median"] == pytest.approx(statistics.median(per_round))
            assert r[key]["q1"] == pytest.approx(per_round[0] + 0.25 * (per_round[1] - per_round[0]))
            assert r[key]["q3"] == pytest.approx(per_round[0] + 0.75 * (per_round[1] - per_round[0]))
        for name, values in times.items():
            assert r["median_us"][name] == pytest.approx(statistics.median(values) * 1e6)
