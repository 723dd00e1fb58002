"""The Triton normals and fused Gaussian kernels under TRITON_INTERPRET=1, bit for bit against the
reference backend (see test_triton.py for why the module may rerun itself in a subprocess)."""

import importlib.util
import math
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
from dropkit.backends import triton_noise  # noqa: E402
from family_helpers import assert_identical  # noqa: E402

in_process = pytest.mark.skipif(TRITON_IMPORTED_FIRST, reason="triton was imported before the interpreter "
                                "flag was set; test_suite_in_subprocess runs these tests")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.skipif(not TRITON_IMPORTED_FIRST, reason="the tests run in this process")
def test_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


# One full program (4 * BLOCK elements) plus a ragged tail; a single pair; an odd count.
SIZES = [1, 7, 4 * triton_noise.BLOCK + 13]
STREAMS = [(0, 0), (2**64 - 1, 2**64 - 3), (12345, 2**32 - 1)]


@in_process
def test_backend_offers_the_noise_ops():
    assert tb.normal is triton_noise.normal and tb.gaussian_apply is triton_noise.gaussian_apply


@in_process
@pytest.mark.parametrize("seed,offset", STREAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_normals_match_reference(seed, offset, dtype):
    for n in SIZES:
        assert_identical(tb.normal(n, seed, offset, dtype, "cpu"), ref.normal(n, seed, offset, dtype))


@in_process
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("additive", [False, True])
def test_gaussian_apply_matches_reference(dtype, additive):
    g = torch.Generator().manual_seed(0)
    c = 0.8 if additive else math.sqrt(0.25 / 0.75)
    for n in SIZES:
        x = (torch.randn(n, generator=g) * 4).to(dtype)
        for seed, offset in STREAMS:
            assert_identical(tb.gaussian_apply(x, seed, offset, c, additive),
                             ref.gaussian_apply(x, seed, offset, c, additive))


@in_process
def test_positions_read_from_device_tensors():
    x = torch.randn(3, 50)
    seed, offset = torch.tensor(-1, dtype=torch.int64), torch.tensor(5, dtype=torch.int64)
    expected = ref.gaussian_apply(x, 2**64 - 1, 5, 0.5, False)
    assert_identical(tb.gaussian_apply(x, seed, offset, 0.5, False), expected)
