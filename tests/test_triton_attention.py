"""The Triton flash-attention kernel under TRITON_INTERPRET=1: mask bit for bit, values and grads.

Runs itself in a subprocess when triton was imported before the interpreter flag could be set
(see tests/test_triton.py). Sizes stay small: the interpreter runs every program in Python.
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

from dropkit.backends import triton_attention as ta  # noqa: E402
from dropkit.functional import dropout_mask, scaled_dot_product_attention  # noqa: E402
from dropkit.ops import use_backend  # noqa: E402
from dropkit.rng import keep_threshold  # noqa: E402

in_process = pytest.mark.skipif(TRITON_IMPORTED_FIRST, reason="triton was imported before the interpreter "
                                "flag was set; test_suite_in_subprocess runs these tests")


@pytest.mark.skipif(not TRITON_IMPORTED_FIRST, reason="the tests run in this process")
def test_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def flash(q, k, v, mask=None, causal=False, p=0.3, seed=0, offset=0):
    scale = q.shape[-1] ** -0.5
    return ta.attention(q, k, v, mask, causal, scale, keep_threshold(p), 1 / (1 - p), seed, offset)


def hand(q, k, v, mask=None, causal=False, p=0.3, seed=0, offset=0):
    """softmax(QK^T scale + M) * keep / (1 - p) @ V, written out."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    length, s_len = s.shape[-2:]
    if causal:
        s = s.masked_fill(torch.ones(length, s_len, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    probs = torch.softmax(s, -1).nan_to_num(0.0)
    keep = dropout_mask(s.shape, p, seed=seed, offset=offset)
    return (probs * keep / (1 - p)) @ v


@in_process
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**64 - 1, 2**32 - 1), (12345, 2**32 - 3)])
def test_mask_is_bit_identical_to_the_reference_and_native_paths(seed, offset):
    # Equal scores and V = identity make the output row i the dropped probabilities themselves,
    # so its nonzeros are the kernel's mask.
    n, h, length, s_len = 2, 2, 5, 16
    q = torch.zeros(n, h, length, 16)
    k = torch.randn(n, h, s_len, 16)
    v = torch.eye(16).expand(n, h, s_len, 16).contiguous()
    kernel_mask = flash(q, k, v, seed=seed, offset=offset) != 0
    expected = dropout_mask((n, h, length, s_len), 0.3, seed=seed, offset=offset)
    assert torch.equal(kernel_mask, expected)
    for backend in ("reference", "native"):
        with use_backend(backend):
            out = scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=seed, offset=offset)
        assert torch.equal(out != 0, expected), backend


CASES = [
    # (L, S, E, causal, mask): odd lengths, causal, bool padding, float additive
    (7, 5, 8, False, None),
    (19, 19, 16, True, None),
    (17, 23, 8, False, "padding"),
    (9, 11, 8, False, "float"),
    (9, 11, 8, False, "float, NaN past the last row"),
]


@in_process
@pytest.mark.parametrize("length,s_len,dim,causal,mask_kind", CASES)
def test_values_and_gradients_match_the_hand_computation(length, s_len, dim, causal, mask_kind):
    torch.manual_seed(length)
    q = torch.randn(2, 2, length, dim, requires_grad=True)
    k = torch.randn(2, 2, s_len, dim, requires_grad=True)
    v = torch.randn(2, 2, s_len, dim, requires_grad=True)
    mask = None
    if mask_kind == "padding":
        mask = torch.rand(2, 1, 1, s_len) > 0.3
        mask[0, 0, 0, :] = False  # a fully padded sequence gives zeros, as torch does
    elif mask_kind == "float":
        mask = torch.randn(1, 2, length, s_len)
    elif mask_kind == "float, NaN past the last row":
        # The rows of a tile past the query length must not read the mask: here they would read NaN.
        padded = torch.full((1, 2, length + 16, s_len), float("nan"))
        padded[:, :, :length] = torch.randn(1, 2, length, s_len)
        mask = padded[:, :, :length]
    stream = dict(seed=2**63 + 11, offset=2**32 - 2)
    out = flash(q, k, v, mask, causal, **stream)
    ref = hand(q, k, v, mask, causal, **stream)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@in_process
def test_grouped_query_attention_and_support_rules():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    assert ta.supports(q, k, v, None, True) and not ta.supports(q, k, v, None, False)
    expanded = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    torch.testing.assert_close(flash(q, k, v, seed=5), hand(q, *expanded, seed=5), atol=2e-6, rtol=1e-5)
    assert not ta.supports(q[0], k[0], v[0], None, False)  # 3-D inputs take the composite path
