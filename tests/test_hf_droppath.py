"""Hugging Face's stochastic depth and LayerDrop under patch(), on real transformers classes.

The models are built from small configs (no download). Each ``*DropPath`` module is found by
its formula (dropkit._select.is_drop_prob_path), replaced by dropkit.DropPath with its rate,
and reached by dropout_layers, set_dropout and the schedules; ``layerdrop`` is named in the
report with the config field that sets it.
"""

import copy

import pytest
import torch
from torch import nn

import dropkit
from dropkit import rng
from dropkit.patch import dropout_layers, set_dropout, unpatch
from dropkit.schedules import LinearWarmup

transformers = pytest.importorskip("transformers")


def _models():
    t = transformers
    return {
        "ConvNext": t.ConvNextForImageClassification(t.ConvNextConfig(
            depths=[1, 2], hidden_sizes=[8, 16], num_stages=2, drop_path_rate=0.2, num_labels=3)),
        "Swin": t.SwinModel(t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=2,
            drop_path_rate=0.2)),
        "Beit": t.BeitModel(t.BeitConfig(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=32, drop_path_rate=0.2)),
        "Dinov2": t.Dinov2Model(t.Dinov2Config(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            mlp_ratio=2, drop_path_rate=0.2)),
    }


def _inputs(name):
    return torch.randn(2, 3, 32 if name == "Swin" else 16, 32 if name == "Swin" else 16)


def _hf_drop_paths(model):
    return {n: m for n, m in model.named_modules() if type(m).__name__.endswith("DropPath")}


@pytest.mark.parametrize("name", ["ConvNext", "Swin", "Beit", "Dinov2"])
def test_every_hf_drop_path_is_replaced_with_its_rate(name):
    torch.manual_seed(0)
    model = _models()[name]
    found = _hf_drop_paths(model)
    assert found, "the config must build drop paths"
    rates = {n: m.drop_prob for n, m in found.items()}
    assert {layer.name: layer.p for layer in dropout_layers(model) if layer.name in found} == rates
    report = dropkit.patch(model, seed=1)
    replaced = {r.name: (r.original, r.replacement, r.p) for r in report.replaced}
    for n, m in found.items():
        assert replaced[n] == (type(m).__name__, "DropPath", rates[n])
        new = model.get_submodule(n)
        assert type(new) is dropkit.DropPath and (new.mode, new.scale_by_keep) == ("row", True)
    assert not [u for u in report.unreplaced if u.type.endswith("DropPath")]
    model.eval()
    x = _inputs(name)
    twin = copy.deepcopy(model)
    assert unpatch(twin) and all(type(twin.get_submodule(n)) is type(m) for n, m in found.items())
    out = model(x)
    ref = twin(x)
    key = "logits" if name == "ConvNext" else "last_hidden_state"
    assert torch.equal(out[key], ref[key])  # eval: both are the identity


@pytest.mark.parametrize("name", ["ConvNext", "Swin", "Beit", "Dinov2"])
def test_replacement_computes_the_hf_formula_on_the_stream(name):
    module = next(iter(_hf_drop_paths(_models()[name]).values()))
    keep = 1.0 - module.drop_prob
    holder = nn.Sequential(module)
    dropkit.patch(holder, seed=5)
    x = torch.randn(64, 3, 2, dtype=torch.float64)
    y = holder[0].train()(x)
    # Hugging Face's rule: x / keep_prob * floor(u + keep_prob), one u per sample; here u is the
    # stream: the sample is kept iff its word is >= round(drop_prob * 2**32).
    words = rng.philox_words(rng.derive_seed(5, "0"), 0, 64)
    kept = (words >= rng.keep_threshold(module.drop_prob)).to(x.dtype).view(64, 1, 1)
    torch.testing.assert_close(y, x / keep * kept, rtol=1e-15, atol=0)
    # The original, on torch's generator, keeps about the same fraction of samples.
    torch.manual_seed(0)
    original = type(module)(module.drop_prob).train()
    z = original(torch.ones(20000, 1))
    assert abs(float((z > 0).double().mean()) - keep) < 5 * (keep * (1 - keep) / 20000) ** 0.5


def test_set_dropout_and_schedules_reach_hf_drop_paths_before_and_after_patch():
    model = _models()["Beit"]
    names = list(_hf_drop_paths(model))
    assert set(names) <= set(set_dropout(model, 0.3, include="*drop_path"))
    assert all(model.get_submodule(n).drop_prob == 0.3 for n in names)
    dropkit.patch(model, seed=0)
    schedule = LinearWarmup(model, warmup_steps=2, include="*drop_path")
    assert schedule.names == names and all(model.get_submodule(n).p == 0.0 for n in names)
    schedule.step()
    assert all(model.get_submodule(n).p == pytest.approx(0.15) for n in names)


def test_a_class_named_drop_path_with_another_formula_is_not_taken():
    class FakeDropPath(nn.Module):
        def __init__(self, drop_prob):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x * (torch.rand(x.shape) > self.drop_prob)  # per element, unscaled

    model = nn.Sequential(FakeDropPath(0.2))
    assert dropout_layers(model) == []
    report = dropkit.patch(model)
    assert report.replaced == [] and type(model[0]) is FakeDropPath
    assert [u.reason for u in report.unreplaced] == ["dropout rate stored as a float attribute drop_prob=0.2"]


def test_layerdrop_is_named_with_its_config_field():
    t = transformers
    bart = t.BartModel(t.BartConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32,
        encoder_layerdrop=0.1, decoder_layerdrop=0.2))
    reasons = {u.name: u.reason for u in dropkit.patch(bart).unreplaced if "LayerDrop" in u.reason}
    assert set(reasons) == {"encoder", "decoder"}
    assert "layerdrop=0.1, set by config.encoder_layerdrop" in reasons["encoder"]
    assert "layerdrop=0.2, set by config.decoder_layerdrop" in reasons["decoder"]
    w2v = t.Wav2Vec2Model(t.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        layerdrop=0.1))
    reasons = [u.reason for u in dropkit.patch(w2v).unreplaced if "LayerDrop" in u.reason]
    assert len(reasons) == 1 and "config.layerdrop=0.1" in reasons[0]
    quiet = t.Wav2Vec2Model(t.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        layerdrop=0.0))
    assert not [u for u in dropkit.patch(quiet).unreplaced if "LayerDrop" in u.reason]


def test_every_installed_transformers_drop_path_class_is_recognised():
    import ast
    import importlib
    from pathlib import Path

    from dropkit._select import drop_prob_path

    # The families the issue names, and their relatives (importing all 40-odd is slow).
    families = ("beit", "convnext", "convnextv2", "data2vec", "dinov2", "donut", "focalnet", "poolformer",
                "pvt", "pvt_v2", "segformer", "swin", "swinv2")
    root = Path(transformers.__file__).parent / "models"
    found = {}
    for path in sorted(p for family in families for p in root.glob(f"{family}/modeling_*.py")):
        names = [n.name for n in ast.parse(path.read_text()).body
                 if isinstance(n, ast.ClassDef) and n.name.endswith("DropPath")]
        if names:
            try:
                module = importlib.import_module(f"transformers.models.{path.parent.name}.{path.stem}")
            except Exception:  # noqa: BLE001 - a model whose optional dependency is missing
                continue
            found.update({name: getattr(module, name) for name in names})
    assert len(found) >= 10 and {"ConvNextDropPath", "SwinDropPath", "BeitDropPath"} <= set(found)
    missed = [name for name, cls in found.items() if not drop_prob_path(cls(0.1))]
    assert not missed
    for name, cls in found.items():
        holder = nn.Sequential(cls(0.25))
        report = dropkit.patch(holder, seed=0)
        assert [(r.original, r.replacement, r.p) for r in report.replaced] == [(name, "DropPath", 0.25)]
