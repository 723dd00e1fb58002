"""dropkit.dropout / dropout_mask / Dropout against the stream contract and PyTorch's semantics."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dropkit
from dropkit import rng
from dropkit.functional import dropout, dropout_mask
from dropkit.ops import use_backend

BACKENDS = ["reference", "auto"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def scalar_mask(shape, p, seed, offset=0):
    """The keep-mask computed word by word from the scalar Philox (independent of the kernels)."""
    n = math.prod(shape)
    t = round(p * 2**32)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    keep = []
    for j in range((n + 3) // 4):
        c = (offset + j) % 2**64
        keep += [w >= t for w in rng.philox4x32((c & 0xFFFFFFFF, c >> 32, 0, 0), key)]
    return torch.tensor(keep[:n], dtype=torch.bool).view(shape)


@pytest.fixture(params=BACKENDS)
def backend(request):
    with use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("p", [0.1, 0.4, 0.5, 0.9])
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**64 - 1, 7), (12345, 2**32 - 1)])
def test_mask_matches_scalar_philox(backend, p, seed, offset):
    shape = (3, 7)
    assert torch.equal(dropout_mask(shape, p, seed=seed, offset=offset), scalar_mask(shape, p, seed, offset))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_dropout_is_x_times_mask_over_keep(backend, p):
    x = torch.randn(5, 9, dtype=torch.float64)
    y = dropout(x, p, seed=11, offset=3)
    keep = dropout_mask(x.shape, p, seed=11, offset=3)
    expected = x * keep * (1 / (1 - p)) if p < 1 else torch.zeros_like(x)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_guide_worked_example_both_modes():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    inverted, classic = dropkit.Dropout(0.4), dropkit.Dropout(0.4, mode="classic")
    inverted.eval(), classic.eval()
    assert torch.equal(inverted(x), x)
    torch.testing.assert_close(classic(x), torch.tensor([0.6, 1.2, 1.8, 2.4, 3.0]))
    # Training: kept units are scaled by 1 / 0.6 (inverted) or left as they are (classic).
    keep = dropout_mask(x.shape, 0.4, seed=5)
    torch.testing.assert_close(dropout(x, 0.4, seed=5), x * keep / 0.6)
    assert torch.equal(dropout(x, 0.4, seed=5, mode="classic"), x * keep)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_expectation_of_training_equals_eval(mode):
    x = torch.full((200_000,), 3.0, dtype=torch.float64)
    train = dropout(x, 0.3, seed=1, mode=mode).mean().item()
    evaluated = dropout(x, 0.3, training=False, mode=mode).mean().item()
    sd = 3.0 * math.sqrt(0.3 * 0.7 / x.numel()) * (1 / 0.7 if mode == "inverted" else 1)
    assert abs(train - evaluated) < 5 * sd


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9, 0.99])
def test_keep_rate_within_five_sd(backend, p):
    n = 10**6
    keep = dropout_mask((n,), p, seed=2024).double().mean().item()
    assert abs(keep - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_seeded_layer_advances_offset_by_blocks():
    layer = dropkit.Dropout(0.5, seed=99)
    x = torch.randn(3, 7)  # 21 words -> 6 blocks
    y1, y2 = layer(x), layer(x)
    assert int(layer.offset) == 2 * math.ceil(21 / 4)
    assert torch.equal(y1, dropout(x, 0.5, seed=99, offset=0))
    assert torch.equal(y2, dropout(x, 0.5, seed=99, offset=6))
    layer.eval()
    layer(x)
    assert int(layer.offset) == 12  # evaluation consumes nothing
    layer.train()
    layer.p = 0.0
    layer(x)
    assert int(layer.offset) == 12  # p = 0 consumes nothing


def test_masks_differ_between_calls_layers_and_steps():
    torch.manual_seed(0)
    x = torch.ones(64, 64)
    a, b = dropkit.Dropout(0.5), dropkit.Dropout(0.5)
    outs = [a(x), a(x), b(x)]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    seeded = dropkit.Dropout(0.5, seed=1)
    assert not torch.equal(seeded(x), seeded(x))


def test_default_mode_follows_torch_manual_seed_and_generator():
    x = torch.ones(100)
    torch.manual_seed(7)
    a = dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(x, 0.5))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dropkit.Dropout(0.5, generator=g1)(x), dropkit.Dropout(0.5, generator=g2)(x))


def test_state_dict_round_trip_continues_the_stream():
    x = torch.randn(4, 10)
    uninterrupted = dropkit.Dropout(0.3, seed=2**63 + 5)
    expected = [uninterrupted(x) for _ in range(4)]
    first = dropkit.Dropout(0.3, seed=2**63 + 5)
    got = [first(x) for _ in range(2)]
    resumed = dropkit.Dropout(0.3, seed=1)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    got += [resumed(x) for _ in range(2)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    assert resumed.stream_state() == {"seed": 2**63 + 5, "offset": 40}


def test_unseeded_layer_has_no_buffers_and_matches_torch_api():
    layer = dropkit.Dropout(0.2, True)
    assert layer.state_dict() == {} and layer.inplace and layer.p == 0.2
    # torch's repr, said to be dropkit's (tests/test_names.py covers the other layers).
    assert repr(layer) == "dropkit." + repr(torch.nn.Dropout(0.2, True))
    assert repr(layer) == "dropkit.Dropout(p=0.2, inplace=True)"
    assert repr(dropkit.Dropout(seed=3)) == "dropkit.Dropout(p=0.5, inplace=False, seed=3)"


def test_eval_returns_input_and_sequential_works():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), dropkit.Dropout(0.5), torch.nn.ReLU())
    model.eval()
    x = torch.randn(2, 4)
    assert torch.equal(model(x), torch.relu(model[0](x)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_match_formula(backend, dtype):
    x = torch.randn(6, 33).to(dtype)
    y = dropout(x, 0.3, seed=4)
    keep = dropout_mask(x.shape, 0.3, seed=4)
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / 0.7, dtype=opmath)
    expected = torch.where(keep, x.to(opmath) * scale, torch.zeros((), dtype=opmath)).to(dtype)
    assert y.dtype == dtype
    assert torch.equal(y, expected)


def test_layouts_mask_by_logical_index(backend):
    x = torch.randn(2, 3, 4, 5)
    reference = dropout(x, 0.5, seed=8)
    cl = x.to(memory_format=torch.channels_last)
    y = dropout(cl, 0.5, seed=8)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, reference)
    xt = x.transpose(1, 3)
    assert torch.equal(dropout(xt, 0.5, seed=8), dropout(xt.contiguous(), 0.5, seed=8))
    sliced = torch.randn(4, 10)[:, ::3]
    assert torch.equal(dropout(sliced, 0.5, seed=8), dropout(sliced.contiguous(), 0.5, seed=8))


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), ()])
def test_empty_and_scalar(backend, shape):
    x = torch.randn(shape)
    y = dropout(x, 0.5, seed=1)
    assert y.shape == x.shape
    assert torch.equal(y, x * dropout_mask(shape, 0.5, seed=1) * 2)


def test_dropped_elements_are_zero_even_for_nan_and_inf(backend):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 50)
    keep = dropout_mask(x.shape, 0.5, seed=3)
    y = dropout(x, 0.5, seed=3)
    assert torch.equal(y[~keep], torch.zeros(int((~keep).sum())))
    assert torch.equal(y[keep].isnan(), x[keep].isnan())


def test_p_one_gives_zeros_and_zero_gradients(backend):
    x = torch.randn(10, requires_grad=True)
    y = dropout(x, 1.0, seed=0)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(10)) and torch.equal(x.grad, torch.zeros(10))


def test_p_zero_is_identity_and_consumes_nothing():
    x = torch.randn(10)
    assert dropout(x, 0.0, seed=1) is x
    layer = dropkit.Dropout(0.0, seed=1)
    assert torch.equal(layer(x), x) and int(layer.offset) == 0


@pytest.mark.parametrize("storage", ["bits", "seed", "bool"])
def test_gradcheck_and_gradient_is_mask_times_scale(backend, storage):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    f = lambda t: dropout(t, 0.35, seed=21, offset=2, mask_storage=storage)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    f(x).backward(torch.ones_like(x))
    keep = dropout_mask(x.shape, 0.35, seed=21, offset=2)
    torch.testing.assert_close(x.grad, keep * torch.tensor(1 / 0.65, dtype=torch.float64), rtol=0, atol=0)


def test_saved_bytes_per_storage():
    def saved_bytes(storage):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        x = torch.randn(1024, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            dropout(x, 0.5, seed=1, mask_storage=storage)
        return sum(total)

    assert saved_bytes("bits") <= 1024 / 8 + 16
    assert saved_bytes("seed") <= 64
    assert saved_bytes("bool") >= 1024


def test_inplace(backend):
    x = torch.randn(8, 8)
    expected = dropout(x, 0.5, seed=2)
    y = dropout(x, 0.5, seed=2, inplace=True)
    assert y is x and torch.equal(x, expected)
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        dropout(leaf, 0.5, seed=1, inplace=True)
    h = torch.randn(3, dtype=torch.float64, requires_grad=True)
    z = h * 2
    dropout(z, 0.5, seed=1, inplace=True).sum().backward()
    torch.testing.assert_close(h.grad, 4 * dropout_mask((3,), 0.5, seed=1).double())


def test_shared_dims():
    x = torch.randn(4, 6, 5)
    y = dropout(x, 0.5, seed=3, shared_dims=(0, 2))
    keep = dropout_mask((1, 6, 1), 0.5, seed=3)
    assert torch.equal(y, torch.where(keep, x * 2, torch.zeros(())))
    layer = dropkit.Dropout(0.5, shared_dims=(-1,), seed=0)
    layer(x)
    assert int(layer.offset) == math.ceil(24 / 4)
    xd = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: dropout(t, 0.5, seed=3, shared_dims=(0,)), (xd,))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True, float("inf")])
def test_bad_p(bad):
    with pytest.raises(ValueError, match="p must"):
        dropkit.Dropout(bad)
    with pytest.raises(ValueError, match="p must"):
        dropout(torch.ones(2), bad)
    with pytest.raises(ValueError):
        dropout_mask((2,), bad, seed=0)


def test_bad_inputs():
    for x in (torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.bool)):
        with pytest.raises(TypeError, match="floating"):
            dropout(x, 0.5)
    with pytest.raises(TypeError):
        dropout([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="shared_dims"):
        dropout(torch.ones(2, 3), 0.5, shared_dims=(2,))
    with pytest.raises(ValueError, match="shared_dims"):
        dropout(torch.ones(2, 3), 0.5, shared_dims=(1, -1))
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            dropkit.Dropout(seed=seed)
        with pytest.raises(ValueError, match="seed"):
            dropout(torch.ones(2), 0.5, seed=seed)
    with pytest.raises(ValueError, match="offset"):
        dropout(torch.ones(2), 0.5, seed=1, offset=-1)
    with pytest.raises(ValueError, match="mode"):
        dropkit.Dropout(mode="scaled")
    with pytest.raises(ValueError, match="mask_storage"):
        dropkit.Dropout(mask_storage="byte")
    with pytest.raises(ValueError, match="either seed or generator"):
        dropkit.Dropout(seed=1, generator=torch.Generator())


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=4),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**64 - 1),
)
def test_property_dropout_matches_mask(shape, p, seed, offset):
    x = torch.randn(shape, dtype=torch.float64)
    y = dropout(x, p, seed=seed, offset=offset)
    keep = scalar_mask(tuple(shape), p, seed, offset)
    scale = 0.0 if p == 1 else 1 / (1 - p)
    assert torch.equal(y, torch.where(keep, x * scale, torch.zeros((), dtype=x.dtype)) if p > 0 else x)
