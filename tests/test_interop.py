"""dropkit in the PyTorch ecosystem: torch.compile, torch.export, ONNX, pickling, state_dict."""

import copy
import inspect
import io
import pickle

import pytest
import torch
from torch import nn

import dropkit
from dropkit.layers import StreamModule
from dropkit.patch import patch, unpatch


def torch_model():
    return nn.Sequential(
        nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.25), nn.Linear(16, 4)
    )


def patched_pair(seed=3):
    """Two identical patched models (same weights, same per-layer streams)."""
    torch.manual_seed(0)
    a = torch_model()
    b = copy.deepcopy(a)
    patch(a, seed=seed)
    patch(b, seed=seed)
    b[4].shared_dims = (0,)  # one mask over the batch: the keep_mask path of the functional
    a[4].shared_dims = (0,)
    return a, b


def test_compile_fullgraph_matches_eager_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend

    eager, compiled_model = patched_pair()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True)
    for _ in range(3):
        x = torch.randn(5, 8, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        y_eager, y_compiled = eager(x), compiled(x2)
        torch.testing.assert_close(y_compiled, y_eager, rtol=0, atol=0)
        y_eager.square().sum().backward()
        y_compiled.square().sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=0, atol=0)
        assert eager[1].offset.item() == compiled_model[1].offset.item() > 0
    # One frame compiled once: the stream position travels as tensors, never as constants.
    assert counter.frame_count == 1
    assert eager[1].offset.item() == 3 * (5 * 16 // 4)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_backward_draws_the_forward_words_again(backend):
    # These layers keep nothing for backward and draw their mask (or noise) again from the
    # position the forward used; compiled, that position must not be the advanced offset.
    makers = {
        "Dropout seed": (lambda: dropkit.Dropout(0.3, mask_storage="seed", seed=1), (4, 64)),
        "DropPath": (lambda: dropkit.DropPath(0.3, seed=2), (4, 3, 8, 8)),
        "Dropout2d": (lambda: dropkit.Dropout2d(0.3, seed=3), (4, 3, 8, 8)),
        "LockedDropout": (lambda: dropkit.LockedDropout(0.3, seed=4), (6, 4, 8)),
        "GaussianDropout": (lambda: dropkit.GaussianDropout(0.2, seed=5), (4, 3, 8, 8)),
    }
    for name, (make, shape) in makers.items():
        eager, compiled_layer = make(), make()
        compiled = torch.compile(compiled_layer, backend=backend, fullgraph=True)
        for _ in range(2):
            x = torch.randn(shape, requires_grad=True)
            x2 = x.detach().clone().requires_grad_(True)
            g = torch.randn(shape)
            eager(x).backward(g)
            compiled(x2).backward(g)
            assert torch.equal(x2.grad, x.grad), name
        assert eager.offset.item() == compiled_layer.offset.item() > 0, name


def test_compiled_model_follows_a_rate_schedule():
    # A rate is a Python float, so each new rate is a new graph for torch.compile (docs/patching.md);
    # what must hold is that the compiled model uses the scheduled rate and the eager masks.
    from dropkit.schedules import LinearWarmup

    eager, compiled_model = patched_pair(seed=4)
    schedules = [LinearWarmup(m, warmup_steps=3) for m in (eager, compiled_model)]
    compiled = torch.compile(compiled_model, backend="aot_eager")
    for _ in range(4):
        x = torch.randn(5, 8)
        torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=0)
        for schedule in schedules:
            schedule.step()
    assert compiled_model[1].p == 0.5 and compiled_model[1].offset.item() == eager[1].offset.item() > 0


def test_no_graph_break():
    model, _ = patched_pair()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 8))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compile_inductor_matches_eager():
    inductor_config = pytest.importorskip("torch._inductor.config")
    eager, compiled_model = patched_pair(seed=11)
    compiled = torch.compile(compiled_model, backend="inductor", fullgraph=True)
    # Inference only: one generated kernel file instead of a forward and a backward (cold
    # inductor compiles are slow on a small CPU); the aot_eager test above covers backward.
    # One compile thread: no worker pool for one small graph. config.patch restores the option
    # properly (monkeypatch.setattr on torch's config module deletes it on undo).
    with torch.no_grad(), inductor_config.patch(compile_threads=1):
        for _ in range(2):
            x = torch.randn(4, 8)
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-6, atol=1e-6)
    assert eager[1].offset.item() == compiled_model[1].offset.item()


def eval_model():
    torch.manual_seed(1)
    model = torch_model()
    patch(model, seed=5)
    return model.eval()


def test_torch_export_eval_has_no_dropout():
    model = eval_model()
    x = torch.randn(3, 8)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("dropkit" in t or "dropout" in t for t in targets), targets
    assert torch.equal(program.module()(x), model(x))
    # Eval-mode inverted dropout is the identity: the torch model before patching agrees.
    torch.manual_seed(1)
    assert torch.equal(torch_model().eval()(x), model(x))


def test_onnx_export_runs_in_onnxruntime():
    onnx = pytest.importorskip("onnx", reason="onnx is a test dependency ([dev] extra)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency ([dev] extra)")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    model = eval_model()
    model[4] = dropkit.Dropout(0.25, mode="classic").eval()  # classic eval: y = 0.75 x
    x = torch.randn(3, 8)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    buffer = io.BytesIO()
    onnx.save(program.model_proto, buffer)
    proto = onnx.load_from_string(buffer.getvalue())
    ops = [node.op_type for node in proto.graph.node]
    assert "Dropout" not in ops and all(node.domain in ("", "ai.onnx") for node in proto.graph.node), ops
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        h = model[3](torch.relu(model[0](x)))
        expected = model[5](0.75 * h)
    assert abs(out - expected.numpy()).max() <= 1e-5


def dropkit_layer_classes():
    classes = []
    for name in sorted(dir(dropkit)):
        obj = getattr(dropkit, name)
        if isinstance(obj, type) and issubclass(obj, StreamModule) and obj is not StreamModule:
            classes.append(obj)
    return classes


# Constructor arguments the layers without defaults need (wrapped modules, a noise scale).
REQUIRED = {
    "DropConnect": lambda: {"module": nn.Linear(5, 3)},
    "WeightDrop": lambda: {"module": nn.LSTM(5, 3)},
    "EmbeddingDropout": lambda: {"embedding": nn.Embedding(10, 5)},
    "GaussianNoise": lambda: {"stddev": 0.3},
    "LayerDrop": lambda: {"layers": [nn.Linear(5, 5), nn.Linear(5, 5)]},
}


def build(cls, **kwargs):
    """An instance with the constructor's defaults, p=0.3 where there is a rate."""
    kwargs.update(REQUIRED.get(cls.__name__, dict)())
    params = inspect.signature(cls.__init__).parameters
    missing = [
        n
        for n, p in params.items()
        if n not in ("self", *kwargs) and p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert not missing, f"add {cls.__name__}'s required arguments {missing} to REQUIRED"
    if "p" in params:
        kwargs["p"] = 0.3
    return cls(**kwargs)


def first_output(layer):
    """The layer's training output on the first input it accepts: float (N, C, ...) of rank 2 to
    5 ending in 5 features, or integer indices for embedding layers."""
    inputs = [torch.arange(float(n)).view(shape) + 1 for shape, n in (((2, 3, 4, 5), 120), ((2, 3, 5), 30))]
    inputs += [torch.arange(360.0).view(2, 3, 4, 3, 5), torch.arange(6).view(2, 3)]
    for x in inputs:
        try:
            return layer(x)
        except (ValueError, TypeError) as e:
            # Only the refusal of a wrong rank or dtype may be passed over, and it must name what
            # it refused; any other error (or an IndexError from inside a layer) fails the test.
            names_it = str(x.dtype) in str(e) if isinstance(e, TypeError) else (
                str(tuple(x.shape)) in str(e) or f"{x.dim()}D" in str(e))
            assert names_it, f"{type(layer).__name__} refused {tuple(x.shape)} {x.dtype} with {e!r}"
            continue
    raise AssertionError(f"{type(layer).__name__} accepts none of the test inputs")


@pytest.mark.parametrize("cls", dropkit_layer_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_every_layer_pickles_and_deepcopies(cls, how):
    layer = build(cls, seed=9)
    first_output(layer)  # advance the stream: the copy must continue from here, not from 0
    clone = pickle.loads(pickle.dumps(layer)) if how == "pickle" else copy.deepcopy(layer)
    assert type(clone) is cls and repr(clone) == repr(layer)
    assert clone.stream_state() == layer.stream_state()
    torch.testing.assert_close(first_output(clone), first_output(layer), rtol=0, atol=0)


def test_state_dict_round_trip_without_seed():
    plain = torch_model()
    patched = torch_model()
    patch(patched)
    patched.load_state_dict(plain.state_dict())  # strict: unseeded replacements add no buffers
    for a, b in zip(plain.parameters(), patched.parameters(), strict=True):
        assert torch.equal(a, b)
    back = torch_model()
    back.load_state_dict(patched.state_dict())
    unpatch(patched)
    assert set(patched.state_dict()) == set(back.state_dict())


def test_plain_state_dict_loads_strictly_into_seeded_layers_but_not_back():
    plain = torch_model()
    patched = torch_model()
    patch(patched, seed=1)
    stream_keys = {"1.seed", "1.offset", "4.seed", "4.offset"}
    result = patched.load_state_dict(plain.state_dict())  # strict: the stream position may be absent
    assert not result.missing_keys and not result.unexpected_keys
    result = torch_model().load_state_dict(patched.state_dict(), strict=False)
    assert set(result.unexpected_keys) == stream_keys and not result.missing_keys
