"""The native CPU backend against the reference backend, bit for bit, on every SIMD path."""

import functools
import os
import subprocess
import sys

import pytest
import torch

import dropkit
from dropkit.backends import reference
from dropkit.ops import use_backend

cpu = pytest.importorskip("dropkit.backends.cpu")
pytestmark = pytest.mark.skipif(cpu.load_error() is not None, reason=f"native kernel: {cpu.load_error()}")

ISAS = cpu.available_isas()
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [0, 1, 3, 5, 7, 8, 63, 64, 65, 1000, 4097]
# thresholds t = round(p * 2**32) for p = 0, tiny, 0.1, 0.5, 1 - 2**-32 and 1
THRESHOLDS = [0, 4, 429496730, 2**31, 2**32 - 1, 2**32]
SEEDS_OFFSETS = [(0, 0), (2**64 - 1, 2**32 - 3), (987654321987, 2**64 - 5)]
STORAGES = ["bits", "seed", "bool"]
SCALE = 1 / 0.7


@pytest.fixture(params=ISAS)
def isa(request):
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(None)


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers, so that -0.0 != +0.0 and NaN payloads count."""
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    return t.contiguous().view(view)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.dtype in (torch.float16, torch.bfloat16):
        # torch's own half conversions give different NaN payloads for small and large tensors,
        # so NaNs are compared as NaNs and everything else bit for bit.
        nan = torch.isnan(expected)
        assert torch.equal(torch.isnan(actual), nan)
        assert torch.equal(as_bits(actual)[~nan], as_bits(expected)[~nan])
    else:
        assert torch.equal(as_bits(actual), as_bits(expected))


def make_input(n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype)
    if n >= 8:
        x[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    return x


@functools.cache
def expected(n, dtype, seed, offset, threshold, storage):
    x = make_input(n, dtype)
    y, saved = reference.dropout_forward(x, seed, offset, threshold, SCALE, storage)
    grad = make_input(n + 1, dtype)[1:]
    grad_in = reference.dropout_backward(grad, saved, seed, offset, threshold, SCALE, storage)
    return x, y, saved, grad, grad_in


def check_case(n, dtype, seed, offset, threshold, storage):
    x, y_ref, saved_ref, grad, grad_ref = expected(n, dtype, seed, offset, threshold, storage)
    y, saved = cpu.dropout_forward(x, seed, offset, threshold, SCALE, storage)
    assert_same(y, y_ref)
    assert saved.dtype == saved_ref.dtype and torch.equal(saved, saved_ref)
    assert_same(cpu.dropout_backward(grad, saved, seed, offset, threshold, SCALE, storage), grad_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_bit_identical(isa, dtype):
    for i, n in enumerate(SIZES):
        for j, threshold in enumerate(THRESHOLDS):
            seed, offset = SEEDS_OFFSETS[(i + j) % len(SEEDS_OFFSETS)]
            for storage in STORAGES:
                check_case(n, dtype, seed, offset, threshold, storage)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_threads_and_counter_wrap(isa, threads, seed, offset):
    # large enough for two threads; offsets near 2**32 and 2**64 wrap inside the call
    n = 2**18 + 3 * 64 + 77  # two threads take 2**17 elements or more each
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype, storage in [(torch.float32, "bits"), (torch.bfloat16, "seed")]:
            check_case(n, dtype, seed, offset, 2**31, storage)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("index0", [2**31 + 2**20, 2**32 - 64, 2**34 + 192, 2**62])
@pytest.mark.parametrize("offset", [0, 2**64 - 2**28])
def test_index_arithmetic_past_2_32_elements(isa, index0, offset):
    # Element index0 + i uses word index0 + i of the call: block (index0 + i) // 4, i.e. a call
    # starting index0 // 4 blocks later, which the reference computes without 2**32 elements.
    x = make_input(300, torch.float32)
    y, bits = cpu.run_range(index0, x, 77, offset, 2**31, SCALE)
    y_ref, bits_ref = reference.dropout_forward(x, 77, (offset + index0 // 4) % 2**64, 2**31, SCALE, "bits")
    assert_same(y, y_ref)
    assert torch.equal(bits, bits_ref)


def test_run_range_rejects_unaligned_index():
    with pytest.raises(ValueError, match="100"):
        cpu.run_range(100, torch.ones(8), 0, 0, 2**31)


@pytest.mark.parametrize("n", [0, 1, 9, 64, 1000])
def test_keep_mask_and_pack_mask(isa, n):
    for threshold in THRESHOLDS:
        mask = cpu.keep_mask(n, 5, 2**32 - 1, threshold)
        assert torch.equal(mask, reference.keep_mask(n, 5, 2**32 - 1, threshold))
        assert torch.equal(cpu.pack_mask(mask), reference.pack_mask(mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_precision_value(isa, dtype):
    # all 65536 bit patterns: rounding ties, subnormals, overflow to inf, NaN
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    for scale in (SCALE, 1.0, 3.0):
        y, _ = cpu.dropout_forward(x, 3, 0, 2**30, scale, "seed")
        assert_same(y, reference.dropout_forward(x, 3, 0, 2**30, scale, "seed")[0])


def test_forced_isa_errors():
    with pytest.raises(ValueError, match="sse9"):
        cpu.set_isa("sse9")


def test_isa_environment_variable_read_at_import():
    code = "import dropkit.backends.cpu as c; print(c.current_isa(), c.load_error())"
    for value, expected in [("scalar", "scalar None"), ("sse9", "sse9")]:
        env = {**os.environ, "DROPKIT_CPU_ISA": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert expected in out.stdout or expected in out.stderr


def test_ops_use_the_native_backend():
    assert dropkit.ops.backend_name("cpu") == "cpu"


@pytest.mark.parametrize("storage", STORAGES)
def test_gradcheck_float64(isa, storage):
    x = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    with use_backend("native"):
        f = lambda t: dropkit.dropout(t, 0.3, seed=4, offset=9, mask_storage=storage)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "sliced"])
def test_strided_inputs_match_reference(isa, layout):
    base = torch.randn(4, 6, 5, 7)
    x = {
        "transposed": base.transpose(1, 3),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, ::2, 1:, ::3],
    }[layout].requires_grad_(True)
    outs = []
    for name in ("native", "reference"):
        with use_backend(name):
            leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            y = dropkit.dropout(leaf, 0.4, seed=8, offset=1)
            y.backward(torch.arange(y.numel(), dtype=y.dtype).view(y.shape))
            outs.append((y.detach(), leaf.grad))
    assert_same(outs[0][0], outs[1][0])
    assert_same(outs[0][1], outs[1][1])


def test_bench_rows_and_saved_bytes():
    from dropkit.app import bench

    rows = bench.run(sizes=[1000], dtypes=["float32"], repeat=1, compile=False, out=lambda s: None)
    saved = {r["case"]: r["saved_per_elem"] for r in rows}
    assert saved["dropkit fwd+bwd bits"] == 125 / 1000  # ceil(1000 / 8) bytes
    assert saved["dropkit fwd+bwd seed"] * 1000 <= 64
    assert saved["torch fwd+bwd"] >= 1  # torch keeps at least a byte-sized mask per element
    # The ratios are the documented quotients of the medians measured in the same run.
    ms = {r["case"]: r["ms"] for r in rows}
    for r in rows:
        ref = ms["torch fwd+bwd"] if "bwd" in r["case"] else ms["torch fwd"]
        assert r["vs_torch"] == pytest.approx(ref / r["ms"])
        assert r["vs_clone"] == pytest.approx(r["ms"] / ms["clone"])
    with pytest.raises(ValueError, match="float8"):
        bench.run(sizes=[8], dtypes=["float8"], out=lambda s: None)


# --- the CPython entry points (py_entry.c) against the ctypes functions ------------------------------


def test_entry_points_are_loaded_and_match_ctypes(monkeypatch):
    from dropkit.backends.cpu import _native

    assert _native.fast is not None, "the build has no CPython entry points"
    x = torch.randn(3, 5, 67)
    strided = x.transpose(1, 2)
    saved_bool = cpu.dropout_forward(x, 7, 1, 2**30, 2.0, "bool")[1]
    saved_bits = cpu.bcast_dropout_forward(x, (3, 1, 67), 4, 0, 2**31, 2.0, "bits")[1]
    calls = [
        lambda: cpu.dropout_forward(x, 2**64 - 1, 2**32 - 3, 2**31, 1.25, "bits"),
        lambda: (cpu.dropout_backward(x, saved_bool, 7, 1, 2**30, 2.0, "bool"),),
        lambda: cpu.bcast_dropout_forward(x, (3, 5, 1), 9, 2**40, 2**31, 2.0, "bits"),
        lambda: cpu.bcast_dropout_forward(strided, (3, 1, 5), 9, 0, 2**31, 2.0, "seed"),
        lambda: (cpu.bcast_dropout_backward(x, saved_bits, (3, 1, 67), 4, 0, 2**31, 2.0, "bits"),),
        lambda: cpu.alpha_forward(x, (3, 5, 1), 3, 0, 2**31, 1.5, 0.25, -0.75, "bits"),
    ]
    fast = [call() for call in calls]
    monkeypatch.setattr(_native, "fast", None)
    slow = [call() for call in calls]
    for got, want in zip(fast, slow, strict=True):
        for u, v in zip(got, want, strict=True):
            assert torch.equal(u.contiguous().view(torch.uint8), v.contiguous().view(torch.uint8))


def test_entry_points_refuse_bad_arguments_with_python_errors():
    from dropkit.backends.cpu import _native

    fast = _native.fast
    args = [_native.isa, 1, None, None, None, None, None, None, 0, 0, 0, 1.0, 0, 1]
    assert fast.run(*args) == 0  # nothing to do
    with pytest.raises(TypeError, match="run takes 14 arguments, got 13"):
        fast.run(*args[:-1])
    with pytest.raises(OverflowError):
        fast.run(*args[:8], -1, *args[9:])  # a negative seed
    with pytest.raises(OverflowError):
        fast.run(*args[:8], 2**64, *args[9:])
    with pytest.raises(TypeError):
        fast.run(*args[:11], "1.0", *args[12:])
    with pytest.raises(OverflowError, match="does not fit a C int"):
        fast.run(*args[:13], 2**40)
    with pytest.raises(TypeError, match="bcast_draw_apply takes 21 arguments"):
        fast.bcast_draw_apply(1, 2)
