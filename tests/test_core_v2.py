"""The core's guarantees: streams record what they reserve, checkpoint replay is exact in every
interleaving (or refuses), bad positions are refused, and no host sync happens on the GPU."""

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit import _torch
from dropkit.functional import dropout_mask
from dropkit.rng import BufferStream, Stream, TensorStream

# --- the stream records what each call consumes; layers compute no word count ------------------

# (factory, input shape, words the call draws, computed here from each layer's paper formula)
FAMILY = {
    "Dropout": (lambda: dropkit.Dropout(0.5, seed=1), (3, 5), 15),
    "Dropout shared": (lambda: dropkit.Dropout(0.5, shared_dims=(1,), seed=1), (3, 5, 2), 6),
    "Dropout1d": (lambda: dropkit.Dropout1d(0.5, seed=1), (2, 3, 7), 6),
    "Dropout2d": (lambda: dropkit.Dropout2d(0.5, seed=1), (2, 3, 4, 4), 6),
    "Dropout3d": (lambda: dropkit.Dropout3d(0.5, seed=1), (2, 3, 2, 2, 2), 6),
    "AlphaDropout": (lambda: dropkit.AlphaDropout(0.5, seed=1), (3, 5), 15),
    "FeatureAlphaDropout": (lambda: dropkit.FeatureAlphaDropout(0.5, seed=1), (2, 3, 4), 6),
    "DropPath row": (lambda: dropkit.DropPath(0.5, seed=1), (4, 3, 2), 4),
    "DropPath batch": (lambda: dropkit.DropPath(0.5, mode="batch", seed=1), (4, 3, 2), 1),
    # seed grid (N, C, H - b + 1, W - b + 1) = (2, 3, 6, 6) for 8x8 maps and b = 3
    "DropBlock2d": (lambda: dropkit.DropBlock2d(0.2, 3, seed=1), (2, 3, 8, 8), 2 * 3 * 6 * 6),
    "DropBlock3d": (lambda: dropkit.DropBlock3d(0.2, 2, seed=1), (1, 2, 3, 3, 3), 1 * 2 * 2 * 2 * 2),
    "GaussianDropout": (lambda: dropkit.GaussianDropout(0.3, seed=1), (3, 5), 16),  # 2 * ceil(15 / 2)
    "GaussianNoise": (lambda: dropkit.GaussianNoise(0.3, seed=1), (3, 5), 16),
    "LockedDropout": (lambda: dropkit.LockedDropout(0.5, seed=1), (6, 2, 3), 6),
    "ConcreteDropout": (lambda: dropkit.ConcreteDropout(nn.Linear(5, 2), seed=1), (3, 5), 15),
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_offset_advances_by_what_the_stream_recorded(name, monkeypatch):
    factory, shape, words = FAMILY[name]
    layer = factory()
    recorded = []
    take = BufferStream.take

    def spy(self, n):
        recorded.append(n)
        return take(self, n)

    monkeypatch.setattr(BufferStream, "take", spy)
    for call in range(2):
        before = layer.stream_state()["offset"]
        layer(torch.randn(shape))
        assert recorded[call] == words
        assert layer.stream_state()["offset"] == before + math.ceil(words / 4)


def test_drop_connect_and_embedding_dropout_record_their_words(monkeypatch):
    recorded = []
    take = BufferStream.take
    monkeypatch.setattr(BufferStream, "take", lambda self, n: recorded.append(n) or take(self, n))
    m = dropkit.DropConnect(nn.Linear(4, 3), 0.5, names=("weight", "bias"), seed=0)
    m(torch.ones(2, 4))
    assert recorded == [12, 3] and m.stream_state()["offset"] == 3 + 1
    recorded.clear()
    e = dropkit.EmbeddingDropout(nn.Embedding(10, 4), 0.5, seed=0)
    e(torch.tensor([1, 2]))
    assert recorded == [10] and e.stream_state()["offset"] == 3


def test_no_layer_module_computes_a_word_count():
    import dropkit.layers as layers

    for module in (layers.dropout, layers.spatial, layers.sequence, layers.weight, layers.noise,
                   layers.alpha, layers.dropblock, layers.droppath, layers.concrete):
        source = open(module.__file__).read()
        assert "take(" not in source and "_words" not in source and "blocks_for" not in source


def test_stream_forms_agree():
    a, b = Stream(9, 2**64 - 1), TensorStream(torch.tensor(9), torch.tensor(-1))
    assert a.take(5) == (9, 2**64 - 1)
    seed, offset = b.take(5)
    assert (int(seed), int(offset)) == (9, -1)
    assert a.offset == 1 and int(b.offset) == 1  # both wrap mod 2**64


# --- activation checkpointing: exact in every interleaving --------------------------------------


class Net(nn.Module):
    def __init__(self, seeded: bool | str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 8)
        if seeded == "generator":
            self.drop = dropkit.Dropout(0.5, generator=torch.Generator().manual_seed(3))
        else:
            self.drop = dropkit.Dropout(0.5, seed=3) if seeded else dropkit.Dropout(0.5)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.tanh(self.fc(x)))


def _masks(layer: nn.Module) -> list:
    seen: list = []
    layer.register_forward_hook(lambda m, i, o: seen.append((o != 0).clone()))
    return seen


def _grad(net: Net, x: torch.Tensor, run) -> tuple[torch.Tensor, list]:
    seen = _masks(net.drop)
    torch.manual_seed(11)
    out = run(net, x)
    out.sum().backward()
    return net.fc.weight.grad.clone(), seen


INTERLEAVINGS = {
    # other calls of the same layer between forward and backward, with and without grad
    "call between, no grad": lambda net, x, ck: _with_between(net, x, ck, torch.no_grad),
    "call between, with grad": lambda net, x, ck: _with_between(net, x, ck, torch.enable_grad),
    # two checkpointed regions sharing one layer
    "two regions": lambda net, x, ck: ck(net.block, ck(net.block, x)),
    # nested checkpoints
    "nested": lambda net, x, ck: ck(lambda t: net.block(ck(net.block, t)), x),
    # R-Drop: the same layer twice in one region
    "r-drop": lambda net, x, ck: ck(lambda t: net.block(t) + net.block(t), x),
}


def _with_between(net, x, ck, mode):
    out = ck(net.block, x)
    with mode():
        net.drop(torch.ones(8, 8))
    return out


@pytest.mark.parametrize("seeded", [True, False, "generator"], ids=["seeded", "default", "generator"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["nonreentrant", "reentrant"])
@pytest.mark.parametrize("case", sorted(INTERLEAVINGS))
def test_checkpoint_recomputes_the_forward_masks(case, reentrant, seeded):
    x = torch.randn(8, 8, requires_grad=True)
    plain = lambda fn, *a: fn(*a)  # noqa: E731
    ck = lambda fn, *a: checkpoint(fn, *a, use_reentrant=reentrant)  # noqa: E731
    g0, m0 = _grad(Net(seeded), x, lambda net, t: INTERLEAVINGS[case](net, t, plain))
    g1, m1 = _grad(Net(seeded), x, lambda net, t: INTERLEAVINGS[case](net, t, ck))
    assert torch.equal(g0, g1)
    # every recomputed mask equals one the forward drew (the forward's calls come first)
    forward = m1[: len(m0)]
    assert all(torch.equal(a, b) for a, b in zip(m0, forward, strict=True))
    for mask in m1[len(m0):]:
        assert any(torch.equal(mask, f) for f in forward)


def test_a_recomputation_that_draws_other_words_refuses():
    drop = dropkit.Dropout(0.5, seed=0)
    calls = []

    def region(t):
        calls.append(1)
        n = 4 if len(calls) == 1 else 5  # a region that is not deterministic
        return drop(t[:n])

    x = torch.randn(6, 3, requires_grad=True)
    y = checkpoint(region, x * 1, use_reentrant=False)
    with pytest.raises(RuntimeError, match="not deterministic"):
        y.sum().backward()


def test_probe_finds_every_internal_on_this_torch():
    # Only the internals that dropkit._torch.SINCE dates after this release may be missing.
    newer = {name for name, since in _torch.SINCE.items() if _torch.TORCH_RELEASE < since}
    assert set(_torch.probe_errors()) == newer


# --- positions are never truncated ----------------------------------------------------------------


BAD_POSITIONS = [torch.tensor(2.7), torch.tensor(True), torch.tensor(2.0, dtype=torch.float64)]


@pytest.mark.parametrize("bad", BAD_POSITIONS)
def test_float_or_bool_positions_are_type_errors(bad):
    x = torch.ones(4)
    with pytest.raises(TypeError, match="seed must be an int or an integer tensor"):
        dropkit.dropout(x, 0.5, seed=bad)
    with pytest.raises(TypeError, match="offset must be an int or an integer tensor"):
        dropkit.dropout(x, 0.5, seed=1, offset=bad)


def test_integer_tensor_positions_match_ints():
    x = torch.ones(10)
    a = dropkit.dropout(x, 0.5, seed=torch.tensor(2**62), offset=torch.tensor(3, dtype=torch.int32))
    assert torch.equal(a, dropkit.dropout(x, 0.5, seed=2**62, offset=3))


@pytest.mark.parametrize("bad", [torch.tensor(2.5), torch.tensor(True), torch.tensor(float("nan"))])
def test_load_state_dict_refuses_a_non_integer_stream_position(bad):
    layer = dropkit.Dropout(0.5, seed=1)
    state = layer.state_dict()
    state["seed"] = bad
    with pytest.raises(TypeError, match="seed must be a one-element int64 tensor"):
        layer.load_state_dict(state)
    assert layer.stream_state() == {"seed": 1, "offset": 0}


def test_generator_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dropkit.Dropout(0.5, generator="g")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dropkit.dropout(torch.ones(3), 0.5, generator="g")


def test_deep_copy_and_pickle_keep_the_stream_their_own(tmp_path):
    import copy

    layer = dropkit.Dropout(0.5, seed=5)
    layer(torch.ones(8))
    clone = copy.deepcopy(layer)
    clone(torch.ones(8))
    assert layer.stream_state()["offset"] == 2 and clone.stream_state()["offset"] == 4
    torch.save(layer, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    loaded(torch.ones(8))
    assert loaded.stream_state()["offset"] == 4 and layer.stream_state()["offset"] == 2


def test_the_mask_matches_dropout_mask_after_the_rewrite():
    layer = dropkit.Dropout(0.25, seed=7)
    x = torch.ones(3, 7)
    y1, y2 = layer(x), layer(x)
    k1 = dropout_mask((3, 7), 0.25, seed=7)
    k2 = dropout_mask((3, 7), 0.25, seed=7, offset=math.ceil(21 / 4))
    assert torch.equal(y1 != 0, k1) and torch.equal(y2 != 0, k2)


# --- the GPU: positions stay on the device; a step can be captured in a CUDA graph --------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_seeded_training_step_is_captured_and_replayed_in_a_cuda_graph():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), dropkit.Dropout(0.3, seed=1), nn.Linear(64, 1)).cuda()
    x = torch.randn(32, 64, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as CUDA graphs require
            opt.zero_grad(set_to_none=False)
            model(x).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        hidden = model[0](x)
        dropped = model[1](hidden)
        model[2](dropped).sum().backward()
    before = int(model[1].offset)  # capture records the kernels without running them
    graph.replay()
    torch.cuda.synchronize()
    keep = dropout_mask((32, 64), 0.3, seed=1, offset=before, device="cuda")
    assert torch.equal(dropped != 0, keep & (hidden != 0))
    graph.replay()
    torch.cuda.synchronize()
    assert int(model[1].offset) == before + 2 * math.ceil(32 * 64 / 4)


TRACED = [dropkit.Dropout(0.5), dropkit.Dropout2d(0.5), dropkit.GaussianDropout(0.2)]


@pytest.mark.parametrize("layer", TRACED)
def test_tracing_a_training_mode_draw_is_refused(layer):
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(layer.train(), torch.ones(2, 3, 4, 4))
    traced = torch.jit.trace(layer.eval(), torch.ones(2, 3, 4, 4))  # eval mode draws nothing
    assert torch.equal(traced(torch.ones(2, 3, 4, 4)), layer(torch.ones(2, 3, 4, 4)))
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(lambda t: dropkit.dropout(t, 0.5), torch.ones(3))
    traced = torch.jit.trace(lambda t: dropkit.dropout(t, 0.5, training=False), torch.ones(3))
    assert torch.equal(traced(torch.ones(3)), torch.ones(3))


def test_sparse_input_is_a_clear_type_error():
    x = torch.eye(3).to_sparse()
    for fn in (dropkit.Dropout(0.5), lambda t: dropkit.dropout(t, 0.5)):
        with pytest.raises(TypeError, match="must be a dense tensor"):
            fn(x)


# --- uniforms and normals: drawn by the native backend, equal to the reference ------------------


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_uniforms_and_normals_equal_the_reference(dtype, threads):
    from dropkit.backends import cpu, reference

    if cpu.load_error():
        pytest.skip(cpu.load_error())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, seed, offset in ((0, 1, 0), (1, 0, 0), (7, 2**64 - 1, 2**64 - 1), (300001, 99, 2**32 - 5)):
            assert torch.equal(cpu.uniform(n, seed, offset, dtype), reference.uniform(n, seed, offset, dtype))
            assert torch.equal(cpu.normal(n, seed, offset, dtype), reference.normal(n, seed, offset, dtype))
    finally:
        torch.set_num_threads(previous)


def test_gaussian_layers_draw_through_the_native_backend():
    x = torch.randn(1001)
    with dropkit.ops.use_backend("reference"):
        expected = dropkit.GaussianDropout(0.3, seed=5)(x), dropkit.GaussianNoise(0.7, seed=5)(x)
    assert dropkit.ops.backend_name("cpu") in ("cpu", "reference")
    assert torch.equal(dropkit.GaussianDropout(0.3, seed=5)(x), expected[0])
    assert torch.equal(dropkit.GaussianNoise(0.7, seed=5)(x), expected[1])
