"""dropout_add_norm on the CPU path: formulas, masks, validation; dropkit never imports triton."""

import re
import subprocess
import sys

import pytest
import torch

from dropkit.functional import dropout_add_norm, dropout_mask


def layer_norm_by_hand(h, w, b, eps):
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps) * w + b


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_cpu_path_is_mask_then_add_then_norm(norm):
    gen = torch.Generator().manual_seed(0)
    x, r = (torch.randn(2, 3, 10, generator=gen, dtype=torch.float64) for _ in range(2))
    w, b = (torch.randn(10, generator=gen, dtype=torch.float64) for _ in range(2))
    p, eps = 0.25, 1e-3
    y, h = dropout_add_norm(x, r, w, b, p=p, norm=norm, eps=eps, prenorm=True, seed=9, offset=2**32 - 1)
    keep = dropout_mask(x.shape, p, seed=9, offset=2**32 - 1)
    expected_h = torch.where(keep, x / (1 - p), 0.0) + r
    torch.testing.assert_close(h, expected_h, rtol=0, atol=1e-15)
    if norm == "layer":
        expected_y = layer_norm_by_hand(expected_h, w, b, eps)
    else:
        expected_y = expected_h / torch.sqrt((expected_h**2).mean(-1, keepdim=True) + eps) * w + b
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)


def test_gradients_match_finite_differences():
    x, r = torch.randn(3, 6, dtype=torch.float64, requires_grad=True), torch.randn(3, 6, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    r.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, r, w, b: dropout_add_norm(x, r, w, b, p=0.3, seed=4, norm="rms"), (x, r, w, b)
    )


def test_eval_and_p1():
    x, r, w = torch.randn(4, 8), torch.randn(4, 8), torch.ones(8)
    y, h = dropout_add_norm(x, r, w, p=0.7, training=False, prenorm=True)
    assert torch.equal(h, x + r)
    _, h1 = dropout_add_norm(x, r, w, p=1.0, prenorm=True, seed=0)
    assert torch.equal(h1, r)


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [
        ({"residual": torch.zeros(4, 7)}, ValueError, "(4, 7)"),
        ({"weight": torch.ones(7)}, ValueError, "(7,)"),
        ({"bias": torch.ones(3)}, ValueError, "(3,)"),
        ({"weight": torch.ones(8, dtype=torch.float64)}, TypeError, "float64"),
        ({"norm": "batch"}, ValueError, "'batch'"),
        ({"eps": 0.0}, ValueError, "0.0"),
        ({"eps": float("nan")}, ValueError, "nan"),
        ({"p": 1.5}, ValueError, "1.5"),
        ({"mask_storage": "byte"}, ValueError, "'byte'"),
        ({"x": torch.zeros(4, 8, dtype=torch.int64)}, TypeError, "int64"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, fragment):
    args = {"x": torch.zeros(4, 8), "residual": torch.zeros(4, 8), "weight": torch.ones(8), "bias": None,
            "p": 0.1, "seed": 0}
    args.update(kwargs)
    with pytest.raises(error, match=re.escape(fragment)):
        dropout_add_norm(**args)


def test_importing_dropkit_does_not_import_triton():
    code = "import sys, dropkit, dropkit.functional; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
