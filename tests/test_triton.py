"""The Triton kernels under TRITON_INTERPRET=1 on CPU tensors, bit for bit against the reference.

The interpreter flag must be set before triton itself is imported (triton.language decorates
its own helpers at import). When another test in this process imported triton first (for
instance through torch.compile), the flag can no longer take effect here, and this module runs
itself in a fresh subprocess instead.
"""

import importlib.util
import os
import subprocess
import sys

TRITON_IMPORTED_FIRST = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install dropkit[gpu])", allow_module_level=True)

import dropkit.backends.triton as tb  # noqa: E402
from dropkit.backends import reference as ref  # noqa: E402
from dropkit.functional import dropout, dropout_add_norm, dropout_mask  # noqa: E402
from dropkit.functional.dropout import inverted_scale  # noqa: E402
from dropkit.ops import use_backend  # noqa: E402
from dropkit.rng import keep_threshold  # noqa: E402
from family_helpers import assert_identical  # noqa: E402

# NaN and inf inputs make the interpreter's numpy multiply warn; the kernels then drop or keep them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
in_process = pytest.mark.skipif(TRITON_IMPORTED_FIRST, reason="triton was imported before the interpreter "
                                "flag was set; test_suite_in_subprocess runs these tests")


@pytest.mark.skipif(not TRITON_IMPORTED_FIRST, reason="the tests run in this process")
def test_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
PS = [0.0, 0.1, 0.5, 1.0]
# One full program (4 * BLOCK elements) plus a ragged tail that fills neither a block nor a byte.
RAGGED = 4 * tb.BLOCK + 13
STREAMS = [(0, 0), (2**64 - 1, 2**32 - 1), (12345, 2**32 - 2)]


@in_process
@pytest.mark.parametrize("seed,offset", STREAMS)
@pytest.mark.parametrize("n", [1, 7, 64, RAGGED])
def test_keep_mask_and_packing_match_reference(n, seed, offset):
    for p in PS:
        t = keep_threshold(p)
        mask = tb.keep_mask(n, seed, offset, t, "cpu")
        assert_identical(mask, ref.keep_mask(n, seed, offset, t, "cpu"))
        assert_identical(tb.pack_mask(mask), ref.pack_mask(mask))


@in_process
def test_threshold_edges_keep_all_and_none():
    # t = 0 keeps every word and t = 2**32 none: the unsigned/64-bit comparison at both ends.
    assert tb.keep_mask(100, 3, 0, 0, "cpu").all()
    assert not tb.keep_mask(100, 3, 0, 2**32, "cpu").any()
    # Just below 2**32 only words equal to 0xFFFFFFFF survive; compare with the reference.
    assert_identical(tb.keep_mask(100, 3, 0, 2**32 - 1, "cpu"), ref.keep_mask(100, 3, 0, 2**32 - 1, "cpu"))


@in_process
@pytest.mark.parametrize("storage", ["bits", "seed", "bool"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_bit_identical(dtype, storage):
    gen = torch.Generator().manual_seed(0)
    seed, offset = 2**40 + 17, 2**32 - 1
    for p in PS:
        t, scale = keep_threshold(p), inverted_scale(p)
        x = torch.randn(RAGGED, generator=gen).to(dtype)
        x[:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-30])
        y, saved = tb.dropout_forward(x, seed, offset, t, scale, storage)
        y_ref, saved_ref = ref.dropout_forward(x, seed, offset, t, scale, storage)
        # NaN bits are compared too: dropped NaNs must become +0.0, kept ones stay NaN.
        assert_identical(y, y_ref)
        assert_identical(saved, saved_ref)
        grad = torch.randn(RAGGED, generator=gen).to(dtype)
        assert_identical(
            tb.dropout_backward(grad, saved, seed, offset, t, scale, storage),
            ref.dropout_backward(grad, saved_ref, seed, offset, t, scale, storage),
        )


@in_process
@pytest.mark.parametrize("storage", ["bits", "seed", "bool"])
def test_dropout_through_ops_autograd_and_saved_bytes(storage):
    x = torch.randn(3, 341, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(3, 341, dtype=torch.bfloat16)
    results = {}
    for backend in ("reference", "triton"):
        saved_bytes = []

        def pack(t, saved_bytes=saved_bytes):
            if t.dtype in (torch.uint8, torch.bool):
                saved_bytes.append(t.numel() * t.element_size())
            return t

        with use_backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = dropout(x, 0.3, seed=99, offset=2**32 - 1, mask_storage=storage)
            (gx,) = torch.autograd.grad(y, x, g)
        results[backend] = (y, gx, sum(saved_bytes))
    for a, b in zip(results["triton"][:2], results["reference"][:2], strict=True):
        assert_identical(a, b)
    expected = {"bits": (x.numel() + 7) // 8, "seed": 0, "bool": x.numel()}[storage]
    assert results["triton"][2] == results["reference"][2] == expected


def unfused(x, residual, weight, bias, p, norm, eps, seed, offset):
    """dropout -> add -> norm, op by op, with the core dropout on CPU."""
    h = dropout(x, p, seed=seed, offset=offset) + residual
    if norm == "layer":
        y = torch.nn.functional.layer_norm(h, (x.shape[-1],), weight, bias, eps)
    else:
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight
        y = y + bias if bias is not None else y
    return y, h


@in_process
@pytest.mark.parametrize("storage", ["bits", "seed"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("shape", [(3, 16), (4, 7), (2, 3, 12)])
def test_fused_matches_unfused_composition(shape, norm, storage):
    gen = torch.Generator().manual_seed(1)
    p, seed, offset, eps = 0.3, 5, 2**32 - 1, 1e-5
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, r = (torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() for _ in range(2))
        w, b = (torch.randn(shape[-1], generator=gen, dtype=dtype).requires_grad_() for _ in range(2))
        gy, gh = (torch.randn(shape, generator=gen, dtype=dtype) for _ in range(2))
        with use_backend("triton"):
            y, h = dropout_add_norm(
                x, r, w, b, p=p, norm=norm, eps=eps, prenorm=True, seed=seed, offset=offset,
                mask_storage=storage,
            )
            grads = torch.autograd.grad([y, h], [x, r, w, b], [gy, gh])
        y_ref, h_ref = unfused(x, r, w, b, p, norm, eps, seed, offset)
        grads_ref = torch.autograd.grad([y_ref, h_ref], [x, r, w, b], [gy, gh])
        # The mask and the rounded sum are exact; the norm agrees to rounding.
        assert_identical(h, h_ref)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        for got, want in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        # dx is the core mask applied to d(residual), exactly.
        keep = dropout_mask(shape, p, seed=seed, offset=offset)
        expected_dx = torch.where(keep, grads[1] * inverted_scale(p), torch.zeros((), dtype=dtype))
        assert_identical(grads[0], expected_dx)


@in_process
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_residual_stream_is_exact(dtype):
    gen = torch.Generator().manual_seed(2)
    x, r = (torch.randn(5, 24, generator=gen).to(dtype) for _ in range(2))
    w = torch.rand(24, generator=gen).to(dtype)
    with use_backend("triton"):
        y, h = dropout_add_norm(x, r, w, p=0.5, norm="rms", prenorm=True, seed=7, offset=3)
    y_ref, h_ref = unfused(x.double(), r.double(), w.double(), None, 0.5, "rms", 1e-5, 7, 3)
    assert_identical(h, dropout(x, 0.5, seed=7, offset=3) + r)
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=2e-2)


@in_process
def test_fused_eval_and_p0_are_plain_add_norm():
    x, r, w = torch.randn(4, 12), torch.randn(4, 12), torch.randn(12)
    for kwargs in ({"p": 0.5, "training": False}, {"p": 0.0}):
        with use_backend("triton"):
            y, h = dropout_add_norm(x, r, w, prenorm=True, seed=1, **kwargs)
        assert_identical(h, x + r)
        torch.testing.assert_close(y, torch.nn.functional.layer_norm(x + r, (12,), w), rtol=1e-5, atol=1e-5)


@in_process
@pytest.mark.parametrize("storage,mask_bytes", [("bits", 4 * 8 // 8), ("seed", 0)])
def test_fused_saves_at_most_one_bit_per_element(storage, mask_bytes):
    x = torch.randn(4, 8, requires_grad=True)
    r, w = torch.randn(4, 8), torch.randn(8)
    saved = []
    with use_backend("triton"), torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t) or t, lambda t: t
    ):
        y = dropout_add_norm(x, r, w, p=0.5, seed=3, mask_storage=storage)
    uint8 = sum(t.numel() for t in saved if t.dtype == torch.uint8)
    assert uint8 == mask_bytes
    y.sum().backward()
    assert x.grad is not None
