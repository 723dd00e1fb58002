"""dropkit's dropout layers are torch's dropout classes to the code around them.

Each of dropkit's Dropout, Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout is checked
against what torch itself does with its class: isinstance, ``p``/``inplace``, eval/train,
torch.fx, torch.export, ONNX, torch.ao quantization and torch.compile; and patch() leaves them
alone. Also here: ``dropkit.patch(model)`` at the top level, and checkpoints saved before patch().
"""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import dropkit
from dropkit import rng
from dropkit.layers import StreamModule

PAIRS = [
    (dropkit.Dropout, nn.Dropout, (4, 6)),
    (dropkit.Dropout1d, nn.Dropout1d, (2, 3, 5)),
    (dropkit.Dropout2d, nn.Dropout2d, (2, 3, 4, 4)),
    (dropkit.Dropout3d, nn.Dropout3d, (2, 3, 2, 2, 2)),
    (dropkit.AlphaDropout, nn.AlphaDropout, (4, 6)),
    (dropkit.FeatureAlphaDropout, nn.FeatureAlphaDropout, (2, 3, 4)),
]
IDS = [ours.__name__ for ours, _, _ in PAIRS]


@pytest.mark.parametrize("ours,theirs,shape", PAIRS, ids=IDS)
def test_instance_of_torch_class_with_torch_attributes(ours, theirs, shape):
    m = ours(0.25, True, seed=3)
    assert isinstance(m, theirs) and isinstance(m, nn.modules.dropout._DropoutNd)
    assert (m.p, m.inplace) == (0.25, True)
    m.p, m.inplace = 0.5, False
    assert (m.p, m.inplace) == (0.5, False)
    with pytest.raises(ValueError, match="1.5"):
        m.p = 1.5
    # dropkit's repr and extra_repr come first in the MRO, not _DropoutNd's.
    mro = type(m).__mro__
    assert mro.index(StreamModule) < mro.index(theirs)
    assert "seed=3" in repr(m)


@pytest.mark.parametrize("ours,theirs,shape", PAIRS, ids=IDS)
def test_eval_is_identity_and_train_draws_from_the_stream(ours, theirs, shape):
    x = torch.randn(shape, dtype=torch.float64)
    m = ours(0.3, seed=11)
    assert torch.equal(m.eval()(x), theirs(0.3).eval()(x))
    m.train()
    y = m(x)
    assert not torch.equal(y, x) and int(m.offset) > 0
    # The stream, not torch's generator, decides: same seed, same output, whatever torch's state.
    torch.manual_seed(0)
    again = ours(0.3, seed=11)(x)
    assert torch.equal(y, again)


def test_dropout_train_mask_is_the_stream_words():
    x = torch.randn(5, 7, dtype=torch.float64)
    y = dropkit.Dropout(0.4, seed=9)(x)
    keep = (rng.philox_words(9, 0, x.numel()) >= round(0.4 * 2**32)).view(x.shape)
    torch.testing.assert_close(y, torch.where(keep, x / 0.6, torch.zeros((), dtype=x.dtype)), rtol=0, atol=0)


def _net():
    return nn.Sequential(nn.Linear(4, 4), dropkit.Dropout(0.3, seed=1), nn.Linear(4, 4),
                         dropkit.Dropout1d(0.2, seed=2), dropkit.AlphaDropout(0.2, seed=4))


def test_fx_traces_them_as_leaves_like_torch_dropout():
    net = _net()
    torch_net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 4), nn.Dropout1d(0.2),
                              nn.AlphaDropout(0.2))
    nodes = [(n.op, n.target) for n in torch.fx.symbolic_trace(net).graph.nodes]
    assert nodes == [(n.op, n.target) for n in torch.fx.symbolic_trace(torch_net).graph.nodes]
    twin = copy.deepcopy(net)
    gm = torch.fx.symbolic_trace(net)
    assert gm.get_submodule("1") is net[1] and gm.get_submodule("3") is net[3]
    x = torch.randn(2, 4, 4)
    assert torch.equal(gm(x), twin(x))  # the traced graph calls dropkit's layers, streams and all
    assert torch.equal(gm.eval()(x), twin.eval()(x))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_export_keeps_dropkit_and_matches_eager(training):
    net = _net().train(training)
    twin = copy.deepcopy(net)
    x = torch.randn(2, 4, 4)
    ep = torch.export.export(net, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("dropout" in t and "dropkit" not in t for t in targets), targets
    assert torch.equal(ep.module()(x), twin(x))


def test_onnx_export_of_eval_model_runs():
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = _net().eval()
    x = torch.randn(2, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(net, (x,), buffer, dynamo=False)
        program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
    for model in (buffer.getvalue(), program.model_proto.SerializeToString()):
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-5, atol=1e-6)


class _Quantizable(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.fc, self.drop, self.fc2 = nn.Linear(4, 4), dropkit.Dropout(0.3, seed=1), nn.Linear(4, 4)

    def forward(self, x):
        return self.dequant(self.fc2(self.drop(self.fc(self.quant(x)))))


def test_ao_eager_quantization_keeps_dropkit_and_passes_quantized_tensors_in_eval():
    tq = torch.ao.quantization
    assert dropkit.Dropout not in tq.get_default_static_quant_module_mappings()
    model = _Quantizable().eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = tq.prepare(copy.deepcopy(model))
        prepared(torch.randn(16, 4))
        quantized = tq.convert(prepared)
    assert type(quantized.drop) is dropkit.Dropout and quantized.fc.__module__.startswith("torch.ao")
    x = torch.randn(3, 4)
    # The same computation with the dropout removed: dropout in eval is the identity.
    expected = quantized.dequant(quantized.fc2(quantized.fc(quantized.quant(x))))
    assert torch.equal(quantized(x), expected)
    q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
    with pytest.raises(TypeError, match="floating-point"):
        dropkit.Dropout(0.5).train()(q)
    with pytest.raises(TypeError, match="floating-point"):  # classic mode scales in eval: not identity
        dropkit.Dropout(0.5, mode="classic").eval()(q)


def test_ao_fx_quantization_keeps_dropkit():
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    tq = torch.ao.quantization
    model = nn.Sequential(nn.Linear(4, 4), dropkit.Dropout(0.3, seed=1), nn.Linear(4, 4)).eval()
    mapping = tq.QConfigMapping().set_global(tq.get_default_qconfig("fbgemm"))
    x = torch.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model), mapping, (x,))
        prepared(x)
        converted = convert_fx(prepared)
    assert type(converted.get_submodule("1")) is dropkit.Dropout
    torch.testing.assert_close(converted(x), model(x), rtol=0.1, atol=0.1)


def test_compile_keeps_the_stream():
    x = torch.randn(4, 64)
    for make in (lambda: dropkit.Dropout(0.3, seed=5), lambda: dropkit.Dropout2d(0.3, seed=5)):
        eager, compiled = make(), torch.compile(make(), backend="aot_eager")
        xx = x.view(4, 4, 4, 4)
        assert torch.equal(compiled(xx), eager(xx))
        assert torch.equal(compiled(xx), eager(xx))


def test_patch_never_replaces_dropkit_layers():
    ours = [cls(0.2, seed=i) for i, (cls, _, _) in enumerate(PAIRS)]
    model = nn.Sequential(nn.Dropout(0.1), *ours)
    report = dropkit.patch(model, seed=0)
    assert [r.name for r in report.replaced] == ["0"]
    assert all(model[i + 1] is m for i, m in enumerate(ours))
    assert not report.unreplaced
    assert dropkit.patch(model, seed=0).replaced == []


def test_torch_style_helpers_reach_patched_layers():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Dropout2d(0.5))
    dropkit.patch(model, seed=0)
    found = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert found == [model[1], model[2]] and all(isinstance(m, StreamModule) for m in found)
    model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
    assert (model[1].p, model[2].p) == (0.0, 0.5)


def test_patch_is_callable_at_the_top_level():
    from dropkit.patch import patch, unpatch

    assert callable(dropkit.patch) and callable(patch) and patch is dropkit.patch.patch
    a = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2))
    b = copy.deepcopy(a)
    assert str(dropkit.patch(a, seed=1)) == str(patch(b, seed=1))
    assert type(a[1]) is dropkit.Dropout
    assert unpatch(a) == ["1"] and dropkit.patch.unpatch(b) == ["1"]
    with pytest.raises(TypeError, match="list"):
        dropkit.patch([nn.Dropout()])


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.3)
        self.layer = nn.TransformerEncoderLayer(6, 2, 12, dropout=0.2, batch_first=True)

    def forward(self, x):
        return self.layer(self.drop(self.fc(x)))


def test_state_dict_saved_before_patch_loads_strictly_and_keeps_the_streams():
    torch.manual_seed(0)
    plain = _Net()
    saved = plain.state_dict()
    patched, fresh = copy.deepcopy(plain), copy.deepcopy(plain)
    dropkit.patch(patched, seed=4)
    dropkit.patch(fresh, seed=4)
    x = torch.randn(2, 3, 6)
    patched(x)  # the streams have moved: loading a plain checkpoint must not reset or require them
    streams = {k: v.clone() for k, v in patched.state_dict().items() if k.endswith(("seed", "offset"))}
    assert len(streams) == 2 * 5  # drop, the layer's three dropouts and its attention dropout
    with torch.no_grad():
        for p in patched.parameters():
            p.add_(1.0)
    result = patched.load_state_dict(saved, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    after = patched.state_dict()
    assert all(torch.equal(after[k], v) for k, v in streams.items())
    assert all(torch.equal(after[k], v) for k, v in saved.items())
    fresh(x)
    assert torch.equal(patched(x), fresh(x))  # same weights, same stream positions: same masks


def test_state_dict_saved_after_patch_resumes_exact_masks():
    torch.manual_seed(0)
    a = _Net()
    b = copy.deepcopy(a)
    dropkit.patch(a, seed=2)
    dropkit.patch(b, seed=2)
    x = torch.randn(2, 3, 6)
    for _ in range(3):
        a(x)
    b.load_state_dict(a.state_dict(), strict=True)
    assert torch.equal(a(x), b(x))
    # Missing keys other than a stream position are still reported.
    partial = {k: v for k, v in a.state_dict().items() if k != "fc.weight"}
    assert b.load_state_dict(partial, strict=False).missing_keys == ["fc.weight"]
    with pytest.raises(RuntimeError, match="fc.weight"):
        b.load_state_dict(partial, strict=True)


def test_patching_doc_ecosystem_examples_run():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "patching.md").read_text()
    section = text.split("## Ecosystem: what code around the model sees", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python")[1:]]
    assert len(blocks) == 4
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/patching.md#ecosystem-{i}", "exec"), namespace)
