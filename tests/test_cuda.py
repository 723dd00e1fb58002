"""dropkit on a CUDA device (the Triton backend) against the reference backend on the CPU, bit for
bit: every member of the family, every kernel path at sizes that span many Triton programs,
forward and backward, in every dtype; the masks of fused attention and of the fused norm read
exactly; a seeded training step that never waits for the device; torch.compile; a patched
Hugging Face model.

Skipped without a CUDA device (``benchmarks/gpu.py`` runs it where there is one).
``DROPKIT_CROSS_DEVICE=cpu`` runs the device-independent checks against the native CPU backend
instead, which is how the checks themselves are tried on a machine without a GPU.
"""

import os

import pytest
import torch
from torch import nn

import dropkit
import dropkit.functional as F
from dropkit.ops import backend_name, use_backend
from family_helpers import assert_identical
from family_members import MEMBERS, NAMES

DEVICE = os.environ.get("DROPKIT_CROSS_DEVICE", "cuda")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (none on this machine)", allow_module_level=True)
if DEVICE == "cuda":
    pytest.importorskip("triton")
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="a CUDA-only behaviour")

# Members whose result also goes through arithmetic that is not dropkit's (matrix products,
# softmax, normalization, log/sigmoid of torch): compared within a tolerance here, and their
# masks read exactly by the dedicated tests below.
NUMERIC = {
    "functional.dropout_add_norm", "functional.scaled_dot_product_attention", "MultiheadAttention",
    "functional.drop_connect", "DropConnect", "ConcreteDropout", "functional.concrete_dropout",
}
# A seed whose high word is set and an offset two blocks before the counter's low word wraps.
SEED, OFFSET = 2**63 + 5, 2**32 - 3


def generated(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def on_both(call, x, grad=True):
    """``call`` on ``DEVICE`` (its own backend) and on the CPU under the reference backend:
    ``(out_device, out_reference, grad_device, grad_reference)``, all on the CPU."""
    results = []
    for device, backend in ((DEVICE, "auto"), ("cpu", "reference")):
        xi = x.detach().to(device).requires_grad_(grad)
        with use_backend(backend):
            out = call(xi)
            g = None
            if grad:
                upstream = generated(out.shape, out.dtype, seed=1).to(device)
                (g,) = torch.autograd.grad(out, xi, upstream)
        results.append((out.detach().cpu(), None if g is None else g.cpu()))
    (out_d, g_d), (out_r, g_r) = results
    return out_d, out_r, g_d, g_r


def test_the_device_runs_its_own_backend():
    assert backend_name(DEVICE) == {"cuda": "triton", "cpu": "cpu"}[DEVICE]


@pytest.mark.parametrize("name", NAMES)
def test_every_member_matches_the_reference_on_the_cpu(name):
    call, shape = MEMBERS[name]
    x = generated(shape)
    differentiable = name not in ("functional.embedding_dropout",)
    out_d, out_r, g_d, g_r = on_both(lambda v: call(v, 11), x, grad=differentiable)
    if name in NUMERIC:
        torch.testing.assert_close(out_d, out_r, rtol=2e-3, atol=2e-3)
        if g_d is not None:
            torch.testing.assert_close(g_d, g_r, rtol=2e-3, atol=2e-3)
    else:
        assert_identical(out_d, out_r)
        if g_d is not None:
            assert_identical(g_d, g_r)


# --- element-wise dropout: every dtype, mask storage and stream corner, many programs ------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
STREAMS = [("bits", 0, 0), ("bool", 2**64 - 1, 2**32 - 1), ("seed", 12345, 2**32 - 2)]
LAYOUTS = {
    "odd": lambda x: x,  # 1037 elements: not a multiple of any block
    "3-d": lambda x: x,
    "transposed": lambda x: x.transpose(0, -1),
}
LAYOUT_SHAPES = {"odd": (1037,), "3-d": (3, 517, 263), "transposed": (263, 517, 3)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("storage,seed,offset", STREAMS)
def test_dropout_kernel_paths(dtype, layout, storage, seed, offset):
    x = generated(LAYOUT_SHAPES[layout], dtype)

    def call(v):
        return F.dropout(LAYOUTS[layout](v), 0.3, seed=seed, offset=offset, mask_storage=storage)

    out_d, out_r, g_d, g_r = on_both(call, x)
    assert_identical(out_d, out_r)
    assert_identical(g_d, g_r)


# --- the shared-mask, alpha, Gaussian and DropBlock kernels at training sizes -----------------------

def _channels_last(v):
    return v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v


SHARED = {
    "drop_path": (lambda v: F.drop_path(v, 0.2, seed=SEED, offset=OFFSET), (64, 197, 384)),
    "dropout[shared_dims]": (lambda v: F.dropout(v, 0.2, shared_dims=(1,), seed=SEED, offset=OFFSET),
                             (32, 197, 384)),
    "dropout1d": (lambda v: F.dropout1d(v, 0.2, seed=SEED, offset=OFFSET), (16, 64, 500)),
    "dropout2d": (lambda v: F.dropout2d(v, 0.2, seed=SEED, offset=OFFSET), (8, 32, 28, 28)),
    "dropout2d[channels_last]": (lambda v: F.dropout2d(_channels_last(v), 0.2, seed=SEED, offset=OFFSET),
                                 (8, 32, 28, 28)),
    "dropout3d": (lambda v: F.dropout3d(v, 0.2, seed=SEED, offset=OFFSET), (4, 16, 8, 8, 8)),
    "locked_dropout": (lambda v: F.locked_dropout(v, 0.2, seed=SEED, offset=OFFSET), (50, 16, 256)),
    "alpha_dropout": (lambda v: F.alpha_dropout(v, 0.2, seed=SEED, offset=OFFSET), (300, 1000)),
    "feature_alpha_dropout": (lambda v: F.feature_alpha_dropout(v, 0.2, seed=SEED, offset=OFFSET),
                              (8, 32, 28, 28)),
    "gaussian_dropout": (lambda v: F.gaussian_dropout(v, 0.2, seed=SEED, offset=OFFSET), (513, 1001)),
    "gaussian_noise": (lambda v: F.gaussian_noise(v, 0.5, seed=SEED, offset=OFFSET), (513, 1001)),
    "drop_block2d": (lambda v: F.drop_block2d(v, 0.2, 7, seed=SEED, offset=OFFSET), (8, 16, 32, 32)),
    "drop_block2d[channels_last]": (lambda v: F.drop_block2d(_channels_last(v), 0.2, 7, seed=SEED,
                                                             offset=OFFSET), (8, 16, 32, 32)),
    "drop_block3d": (lambda v: F.drop_block3d(v, 0.2, 3, seed=SEED, offset=OFFSET), (2, 4, 12, 12, 12)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_mask_and_noise_kernels_at_training_sizes(name, dtype):
    call, shape = SHARED[name]
    out_d, out_r, g_d, g_r = on_both(call, generated(shape, dtype))
    assert_identical(out_d, out_r)
    assert_identical(g_d, g_r)


# --- fused attention: the dropout mask read exactly, and the numbers within the dtype's error ------

def _attention_keep(dtype, causal, device, backend, grad):
    """With q = k = 0 every score is equal, and v = I makes output column j the weight of key j:
    ``out[..., i, j] = keep[i, j] * softmax / (1 - p)``; with upstream gradient I,
    ``grad_v[..., j, i]`` is the same dropped weight. Both are non-zero exactly where kept."""
    b, h, length, s = 2, 3, 100, 64
    q = torch.zeros(b, h, length, s, dtype=dtype, device=device)
    k = torch.zeros(b, h, s, s, dtype=dtype, device=device)
    v = torch.eye(s, dtype=dtype, device=device).expand(b, h, s, s).contiguous().requires_grad_(grad)
    with use_backend(backend):
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, is_causal=causal, seed=SEED,
                                             offset=OFFSET)
        if not grad:
            return (out != 0).cpu(), None
        upstream = torch.eye(length, s, dtype=dtype, device=device).expand(b, h, length, s)
        (gv,) = torch.autograd.grad(out, v, upstream)
    return (out != 0).cpu(), (gv.transpose(-1, -2)[..., :s, :] != 0).cpu()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_masks_are_the_references(dtype, causal):
    keep_d, gkeep_d = _attention_keep(dtype, causal, DEVICE, "auto", grad=True)
    keep_r, gkeep_r = _attention_keep(torch.float32, causal, "cpu", "reference", grad=True)
    assert 0.6 < keep_r.float().mean() < 0.8 or causal
    assert torch.equal(keep_d, keep_r)
    assert torch.equal(gkeep_d, gkeep_r)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2), (torch.float32, 3e-3)],
                         ids=["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_numbers_are_the_references(dtype, tol, causal):
    q, k, v = (generated((2, 4, 100, 64), seed=i) for i in range(3))
    upstream = generated((2, 4, 100, 64), seed=3)
    results = []
    for device, backend, dt in ((DEVICE, "auto", dtype), ("cpu", "reference", torch.float64)):
        leaves = [t.to(device, dt).requires_grad_() for t in (q, k, v)]
        with use_backend(backend):
            out = F.scaled_dot_product_attention(*leaves, dropout_p=0.1, is_causal=causal, seed=7)
            grads = torch.autograd.grad(out, leaves, upstream.to(device, dt))
        results.append([t.detach().cpu().double() for t in (out, *grads)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# --- the fused dropout-add-norm: h exactly, y within normalization's error --------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(4096, 768), (300, 1000)], ids=["4096x768", "300x1000"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_norm_mask_and_values(dtype, shape, norm):
    x = generated(shape, dtype)
    weight, bias = generated(shape[-1:], dtype, seed=2), generated(shape[-1:], dtype, seed=3)
    results = []
    for device, backend in ((DEVICE, "auto"), ("cpu", "reference")):
        xi = x.to(device).requires_grad_()
        zero = torch.zeros_like(xi)  # h = dropout(x) exactly, whatever the kernel fuses
        with use_backend(backend):
            y, h = F.dropout_add_norm(xi, zero, weight.to(device), bias.to(device), p=0.2, norm=norm,
                                      prenorm=True, seed=SEED, offset=OFFSET)
            (gx,) = torch.autograd.grad(y, xi, generated(shape, dtype, seed=4).to(device))
        results.append((y.detach().cpu(), h.detach().cpu(), gx.cpu()))
    (y_d, h_d, g_d), (y_r, h_r, g_r) = results
    assert_identical(h_d, h_r)
    assert torch.equal(g_d == 0, g_r == 0)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(y_d, y_r, rtol=tol, atol=tol)
    torch.testing.assert_close(g_d, g_r, rtol=tol * 10, atol=tol * 10)


# --- what only a GPU shows -------------------------------------------------------------------------

@cuda_only
def test_a_seeded_training_step_never_waits_for_the_device():
    # DropBlock is left out: its scale, count / kept, reads the kept count on the host (one wait
    # per forward; docs/performance.md says so).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), dropkit.Dropout(0.3, seed=1), dropkit.GaussianDropout(0.2, seed=2),
        nn.Unflatten(1, (4, 4, 4)), dropkit.Dropout2d(0.2, seed=3), dropkit.Dropout3d(0.2, seed=4),
        nn.Flatten(), dropkit.DropPath(0.2, seed=5), dropkit.AlphaDropout(0.1, seed=6), nn.Linear(64, 1),
    ).cuda()
    attention = dropkit.MultiheadAttention(64, 4, dropout=0.1, batch_first=True, seed=7).cuda()
    x = torch.randn(32, 64, device="cuda")
    s = torch.randn(2, 16, 64, device="cuda")
    weight, seed = torch.ones(64, device="cuda"), torch.tensor(3, device="cuda")  # made before the check

    def step():
        model(x).sum().backward()
        attention(s, s, s, need_weights=False)[0].sum().backward()
        F.dropout_add_norm(x, x, weight, p=0.1, seed=seed)
        # Functional calls with Python ints: the position is filled on the device, never copied.
        F.dropout(x, 0.1, seed=3, offset=2**40).sum()
        F.drop_path(s, 0.1, seed=2**64 - 1).sum()
        F.scaled_dot_product_attention(s[:, None], s[:, None], s[:, None], dropout_p=0.1, seed=5).sum()

    step()  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda_only
def test_compiled_layers_draw_the_eager_masks_on_the_device():
    def block():
        return nn.Sequential(dropkit.Dropout(0.2, seed=1), dropkit.DropPath(0.2, seed=2),
                             dropkit.Dropout2d(0.1, seed=3)).cuda()

    x = torch.randn(8, 16, 12, 12, device="cuda", requires_grad=True)
    eager, compiled = block(), torch.compile(block(), fullgraph=True)
    for _ in range(2):  # the second step checks that the positions advanced alike
        want = eager(x)
        got = compiled(x)
        assert torch.equal(got, want)
        (g_want,) = torch.autograd.grad(want.square().sum(), x)
        (g_got,) = torch.autograd.grad(got.square().sum(), x)
        assert torch.equal(g_got, g_want)


def test_a_patched_hugging_face_model_trains_with_the_cpu_masks():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
    )
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for device, backend in ((DEVICE, "auto"), ("cpu", "reference")):
        torch.manual_seed(0)
        model = transformers.BertForMaskedLM(config)
        dropkit.patch(model, seed=9)
        model.to(device).train()
        with use_backend(backend):
            out = model(input_ids=ids.to(device), labels=ids.to(device))
            out.loss.backward()
        losses.append(out.loss.item())
    assert abs(losses[0] - losses[1]) < 1e-4, losses
