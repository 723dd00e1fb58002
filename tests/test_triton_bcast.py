"""The Triton kernels for broadcast masks, alpha dropout and DropBlock under TRITON_INTERPRET=1, on CPU
tensors, bit for bit against the reference backend (runs itself in a subprocess when triton was
imported before the interpreter flag could take effect, as tests/test_triton.py does)."""

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

import dropkit.backends.triton_bcast as tbc  # noqa: E402
from dropkit.backends import reference as ref  # noqa: E402
from dropkit.functional.alpha import alpha_affine  # noqa: E402
from dropkit.functional.dropblock import dropblock_gamma  # noqa: E402
from dropkit.rng import keep_threshold  # noqa: E402
from family_helpers import assert_identical  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
in_process = pytest.mark.skipif(TRITON_IMPORTED_FIRST, reason="triton was imported before the interpreter "
                                "flag was set; test_suite_in_subprocess runs these tests")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
STORAGES = ["bits", "bool", "seed"]
STREAMS = [(0, 0), (2**64 - 1, 2**32 - 1), (12345, 2**32 - 2)]


@pytest.mark.skipif(not TRITON_IMPORTED_FIRST, reason="the tests run in this process")
def test_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def make_input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    flat = x.view(-1)
    specials = torch.tensor([float("nan"), float("inf"), -0.0, 7e4])
    k = min(flat.numel(), specials.numel())
    flat[:k] = specials[:k]
    return x.to(dtype)


CASES = [
    ((3, 5, 7), (3, 1, 1), "contiguous"),
    ((3, 5, 7), (1, 5, 7), "contiguous"),
    ((3, 5, 7), (3, 1, 7), "transposed"),
    ((2, 0, 3), (2, 1, 3), "contiguous"),
    ((2, 4, 5, 6), (2, 4, 1, 1), "channels_last"),
    ((2, 4, 5, 6), (1, 4, 5, 1), "sliced"),
    ((2, 3, 2, 3, 5), (2, 1, 2, 1, 5), "contiguous"),  # five dims that do not merge
    ((1037,), (1037,), "contiguous"),
]


def layout(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "transposed":
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if name == "sliced":
        return torch.cat([x, x], dim=-1)[..., ::2]
    return x


@in_process
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bcast_dropout_and_alpha_match_reference(case, dtype):
    shape, ms, name = case
    for k, storage in enumerate(STORAGES):
        x = layout(make_input(shape, dtype, seed=k), name)
        seed, offset = STREAMS[k]
        t = keep_threshold((0.1, 0.5, 0.9)[k])
        y, saved = tbc.bcast_dropout_forward(x, ms, seed, offset, t, 1 / 0.7, storage)
        y_ref, saved_ref = ref.bcast_dropout_forward(x, ms, seed, offset, t, 1 / 0.7, storage)
        assert_identical(y, y_ref)
        assert torch.equal(saved.reshape(-1), saved_ref.reshape(-1))
        g = tbc.bcast_dropout_backward(x, saved, ms, seed, offset, t, 1 / 0.7, storage)
        assert_identical(g, ref.bcast_dropout_backward(x, saved_ref, ms, seed, offset, t, 1 / 0.7, storage))
        a, b, alpha_p = alpha_affine(0.3)
        y, saved = tbc.alpha_forward(x, ms, seed, offset, t, a, b, a * alpha_p + b, storage)
        assert_identical(y, ref.alpha_forward(x, ms, seed, offset, t, a, b, a * alpha_p + b, storage)[0])
        g = tbc.alpha_backward(x, saved, ms, seed, offset, t, a, storage)
        assert_identical(g, ref.alpha_backward(x, saved, ms, seed, offset, t, a, storage))


@in_process
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropblock_matches_reference(shared, dtype):
    for k, (shape, blocks) in enumerate([((2, 3, 9, 8), (3, 4)), ((1, 2, 4, 5, 6), (2, 3, 3))]):
        x = make_input(shape, dtype, seed=k)
        t = keep_threshold(dropblock_gamma(0.2, blocks, shape[2:]))
        storage = STORAGES[k]
        y, saved, scale = tbc.dropblock_forward(x, blocks, 3, 1, t, shared, storage)
        y_ref, saved_ref, scale_ref = ref.dropblock_forward(x, blocks, 3, 1, t, shared, storage)
        assert scale == scale_ref
        assert_identical(y, y_ref)
        g = tbc.dropblock_backward(x, saved, blocks, 3, 1, t, shared, scale, storage)
        assert_identical(g, ref.dropblock_backward(x, saved_ref, blocks, 3, 1, t, shared, scale, storage))


@in_process
def test_layers_route_shared_masks_to_the_triton_kernels():
    import dropkit
    from dropkit.ops import use_backend

    x = make_input((2, 4, 96, 96), torch.float32)
    makers = [lambda: dropkit.Dropout2d(0.3, seed=1), lambda: dropkit.DropPath(0.3, seed=1),
              lambda: dropkit.FeatureAlphaDropout(0.3, seed=1), lambda: dropkit.DropBlock2d(0.3, 5, seed=1)]
    for make in makers:
        with use_backend("reference"):
            expected = make()(x)
        with use_backend("triton"):
            assert_identical(make()(x), expected)
