"""Attention dropout on dropkit's stream: the functional SDPA, MultiheadAttention, patch() on
real transformers (torch, Hugging Face, timm) and MC dropout that sees attention dropout."""

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit.functional import dropout_mask, scaled_dot_product_attention
from dropkit.ops import use_backend
from dropkit.patch import patch, unpatch
from dropkit.uncertainty import mc_dropout, mc_predict, unswitchable_modules


def hand(q, k, v, mask=None, causal=False, p=0.0, seed=0, offset=0, scale=None):
    """softmax(Q K^T scale + M) * keep / (1 - p) @ V, written out with dropkit.dropout_mask."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    length, s_len = s.shape[-2:]
    if causal:
        s = s.masked_fill(torch.ones(length, s_len, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    probs = torch.softmax(s, -1).nan_to_num(0.0)
    keep = dropout_mask(s.shape, p, seed=seed, offset=offset)
    return (probs * keep / (1 - p)) @ v


def qkv(*shape_q, s_len=None, dtype=torch.float32, heads_kv=None, grad=False):
    torch.manual_seed(0)
    *batch, heads, length, dim = shape_q
    s_len = s_len or length
    kv = (*batch, heads_kv or heads, s_len, dim)
    return tuple(torch.randn(*s, dtype=dtype, requires_grad=grad) for s in (shape_q, kv, kv))


MASKS = ["none", "bool", "float", "causal"]


def make_mask(kind, length, s_len, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    if kind == "bool":
        m = torch.rand(2, 1, length, s_len, generator=g) > 0.3
        m[0, 0, 1] = False  # a row with nothing to attend to
        return m
    if kind == "float":
        return torch.randn(1, 3, length, s_len, generator=g, dtype=dtype)
    return None


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_p0_is_torch_sdpa(kind, dtype):
    q, k, v = qkv(2, 3, 5, 8, s_len=7, dtype=dtype)
    mask = make_mask(kind, 5, 7, dtype)
    causal = kind == "causal"
    ours = scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale=0.3)
    assert torch.equal(ours, F.scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale=0.3))


@pytest.mark.parametrize("kind", MASKS)
def test_dropout_equals_the_hand_computation(kind):
    q, k, v = qkv(2, 3, 5, 8, s_len=7 if kind != "causal" else 5, dtype=torch.float64)
    mask = make_mask(kind, 5, k.shape[-2], torch.float64)
    causal = kind == "causal"
    out = scaled_dot_product_attention(q, k, v, mask, 0.4, causal, seed=9, offset=3)
    torch.testing.assert_close(out, hand(q, k, v, mask, causal, 0.4, seed=9, offset=3))
    # dropout_p -> 0 on the dropout path meets torch's own result
    near_zero = scaled_dot_product_attention(q, k, v, mask, 1e-300, causal, seed=9)
    torch.testing.assert_close(near_zero, F.scaled_dot_product_attention(q, k, v, mask, 0.0, causal))


def test_bf16_fp32_within_tolerance_and_p1_gives_zeros():
    q, k, v = qkv(2, 3, 16, 8)
    ref = hand(q, k, v, p=0.2, seed=4)
    out = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), dropout_p=0.2, seed=4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert torch.equal(scaled_dot_product_attention(q, k, v, dropout_p=1.0, seed=1), torch.zeros_like(q))


def test_gqa_scale_and_broadcast_batch():
    q, k, v = qkv(2, 4, 5, 8, heads_kv=2, dtype=torch.float64)
    out = scaled_dot_product_attention(q, k, v, dropout_p=0.3, scale=0.5, enable_gqa=True, seed=2)
    ref = hand(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), p=0.3, seed=2, scale=0.5)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, enable_gqa=True),
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    )
    q3 = q[0]  # (H, L, E): no batch dimension
    torch.testing.assert_close(
        scaled_dot_product_attention(q3, q3, q3, dropout_p=0.3, seed=2), hand(q3, q3, q3, p=0.3, seed=2)
    )


@pytest.mark.parametrize("kind", MASKS)
def test_gradcheck_float64(kind):
    q, k, v = qkv(1, 2, 4, 3, s_len=4, dtype=torch.float64, grad=True)
    mask = make_mask(kind, 4, 4, torch.float64)
    if mask is not None and mask.dtype == torch.float64:
        mask = mask[:, :2].clone().requires_grad_()
    causal = kind == "causal"
    inputs = (q, k, v) + ((mask,) if mask is not None and mask.requires_grad else ())

    def fn(q, k, v, *m):
        return scaled_dot_product_attention(q, k, v, m[0] if m else mask, 0.3, causal, seed=5, offset=7)

    assert torch.autograd.gradcheck(fn, inputs)


def test_masks_agree_across_backends_and_seed_sources():
    q, k, v = qkv(2, 3, 6, 8, s_len=9)
    with use_backend("reference"):
        ref = scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=2**64 - 1, offset=2**32 - 1)
    native = scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=2**64 - 1, offset=2**32 - 1)
    assert torch.equal(ref, native)
    torch.manual_seed(3)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(3)
    assert torch.equal(a, scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    g = torch.Generator().manual_seed(8)
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=g)
    again = torch.Generator().manual_seed(8)
    assert torch.equal(b, scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=again))


def test_backward_saves_one_bit_per_probability_for_the_mask():
    q, k, v = qkv(4, 2, 32, 8, grad=True)
    probs = 4 * 2 * 32 * 32
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scaled_dot_product_attention(q, k, v, dropout_p=0.1, seed=0)
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    extra = [t for t in saved if t.untyped_storage().data_ptr() not in inputs]
    masks = [t for t in extra if not t.is_floating_point()]
    floats = [t for t in extra if t.is_floating_point()]
    assert sum(t.numel() * t.element_size() for t in masks) * 8 <= probs  # at most 1 bit each
    assert sum(t.numel() for t in floats) <= probs  # the softmax alone, never the dropped copy


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(dropout_p=1.5), ValueError),
        (dict(dropout_p="0.1"), ValueError),
        (dict(is_causal=1), TypeError),
        (dict(scale="x"), TypeError),
        (dict(attn_mask=[1.0]), TypeError),
        (dict(attn_mask=torch.ones(4, 4, dtype=torch.bool), is_causal=True), ValueError),
        (dict(seed=-1, dropout_p=0.1), ValueError),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error):
    q = torch.randn(1, 4, 4)
    with pytest.raises(error):
        scaled_dot_product_attention(q, q, q, **kwargs)
    with pytest.raises(TypeError, match="query"):
        scaled_dot_product_attention([1.0], q, q)
    with pytest.raises(ValueError, match="key and value"):
        scaled_dot_product_attention(q, q, q[:, :2])


# ---------------------------------------------------------------- MultiheadAttention


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(batch_first=True), dict(add_bias_kv=True, add_zero_attn=True), dict(kdim=6, vdim=5)],
)
def test_multihead_attention_is_torch_in_eval_and_the_formula_in_training(kwargs):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 2, dropout=0.3, **kwargs)
    ours = dropkit.MultiheadAttention(8, 2, dropout=0.3, seed=4, **kwargs)
    # torch's state_dict loads strictly: the seeded stream keeps its own position.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert int(ours.attn_dropout.seed) == 4
    unseeded = dropkit.MultiheadAttention(8, 2, **kwargs).state_dict()
    assert set(nn.MultiheadAttention(8, 2, **kwargs).state_dict()) == set(unseeded)
    n, length, s_len = 3, 5, 7
    first = kwargs.get("batch_first", False)
    shape = (lambda t, d: (n, t, d)) if first else (lambda t, d: (t, n, d))
    q = torch.randn(shape(length, 8))
    k, v = torch.randn(shape(s_len, kwargs.get("kdim", 8))), torch.randn(shape(s_len, kwargs.get("vdim", 8)))
    pad, mask = torch.rand(n, s_len) < 0.3, torch.rand(length, s_len) < 0.2
    for m in (ours, theirs):
        m.eval()
    for need in (True, False):
        a = ours(q, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=need)
        b = theirs(q, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=need)
        assert torch.equal(a[0], b[0]) and (not need or torch.equal(a[1], b[1]))
    ours.train()
    outs = []
    for need in (True, False):
        ours.attn_dropout.offset.zero_()
        outs.append(ours(q, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=need))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert int(ours.attn_dropout.offset) > 0
    # the weights are the dropped probabilities, as torch's are: entries 0 or p / (1 - p)-scaled
    weights = ours(q, k, v, need_weights=True, average_attn_weights=False)[1]
    assert weights.shape == (n, 2, length, s_len + (1 if kwargs.get("add_bias_kv") else 0)
                             + (1 if kwargs.get("add_zero_attn") else 0))
    assert (weights == 0).any()


def test_multihead_attention_matches_its_hand_computation():
    torch.manual_seed(0)
    m = dropkit.MultiheadAttention(8, 2, dropout=0.25, batch_first=True, seed=11)
    x = torch.randn(3, 5, 8)
    out = m(x, x, x, need_weights=False)[0]
    w_q, w_k, w_v = m.in_proj_weight.chunk(3)
    b_q, b_k, b_v = m.in_proj_bias.chunk(3)

    def heads(t):
        return t.view(3, 5, 2, 4).transpose(1, 2)

    q, k, v = heads(x @ w_q.T + b_q), heads(x @ w_k.T + b_k), heads(x @ w_v.T + b_v)
    ctx = hand(q, k, v, p=0.25, seed=11)
    ref = m.out_proj(ctx.transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(out, ref)


def test_dropout_attribute_is_the_child_rate():
    m = dropkit.MultiheadAttention(8, 2, dropout=0.1)
    assert m.dropout == m.attn_dropout.p == 0.1
    m.dropout = 0.4
    assert m.attn_dropout.p == 0.4
    with pytest.raises(ValueError):
        m.dropout = 2.0


# ---------------------------------------------------------------- real models


def reset_streams(model):
    for module in model.modules():
        if isinstance(module, dropkit.StreamModule) and module.offset is not None:
            module.offset.zero_()


def train_step(model, inputs, seed):
    """Output and gradients of one train-mode pass, with torch's generator at ``seed``."""
    torch.manual_seed(seed)
    reset_streams(model)
    model.zero_grad()
    out = model(**inputs)
    out = out.logits if hasattr(out, "logits") else out
    out.float().square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def check_patched(model, inputs, original_types):
    reference = copy.deepcopy(model)
    patch(model, seed=0)
    model.train()
    a, grads_a = train_step(model, inputs, 1)
    b, grads_b = train_step(model, inputs, 2)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b, strict=True))
    with torch.no_grad():
        model.eval()
        reference.eval()
        ours, theirs = model(**inputs), reference(**inputs)
    ours, theirs = (o.logits if hasattr(o, "logits") else o for o in (ours, theirs))
    assert torch.equal(ours, theirs)
    # train mode really drops: it differs from evaluation
    model.train()
    assert not torch.equal(train_step(model, inputs, 1)[0], theirs)
    unpatch(model)
    assert {type(m) for m in model.modules()} == original_types


def test_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    types = {type(m) for m in model.modules()}
    report = patch(copy.deepcopy(model))
    assert not report.unreplaced
    assert [r.name for r in report.replaced][:2] == ["layers.0.self_attn", "layers.0.dropout"]
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, 4:] = True
    check_patched(model, dict(src=torch.randn(3, 6, 16), src_key_padding_mask=pad), types)


def test_patch_shares_the_parameters_and_unpatch_restores_the_rate():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    weight = layer.self_attn.in_proj_weight
    patch(layer)
    assert type(layer.self_attn) is dropkit.MultiheadAttention and layer.self_attn.in_proj_weight is weight
    dropkit.patch.set_dropout(layer, 0.3)
    unpatch(layer)
    assert type(layer.self_attn) is nn.MultiheadAttention and layer.self_attn.dropout == 0.3


transformers = pytest.importorskip("transformers", reason="transformers is an optional test dependency")


def tiny_bert(impl, hidden_dropout=0.1, attention_dropout=0.1):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=hidden_dropout,
        attention_probs_dropout_prob=attention_dropout, attn_implementation=impl,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_gpt2(impl):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_implementation=impl,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2])
def test_hugging_face_models(build, impl):
    model = build(impl)
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[0, 6:] = 0
    report = patch(copy.deepcopy(model))
    assert report.unreplaced == []
    types = {type(m) for m in model.modules()}
    check_patched(model, dict(input_ids=ids, attention_mask=attention_mask), types)
    assert model.config._attn_implementation == impl


def test_unpatched_bert_attention_is_named_and_mc_dropout_sees_it_once_patched():
    model = tiny_bert("sdpa", hidden_dropout=0.0, attention_dropout=0.5).eval()
    ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    assert unswitchable_modules(model) == [f"bert.encoder.layer.{i}.attention.self" for i in range(2)]
    with pytest.warns(UserWarning, match="attention.self"):
        mc_dropout(model).restore()
    with pytest.raises(TypeError, match="output="):
        mc_predict(model, ids, samples=2)
    patch(model)
    assert unswitchable_modules(model) == []
    a = mc_predict(model, ids, samples=6, seed=1, output="logits")
    assert a.shape == (6, 4, 3) and a.var(0).sum() > 0
    assert torch.equal(a, mc_predict(model, ids, samples=6, seed=1, output=lambda out: out.logits))
    assert torch.equal(a, mc_predict(model, ids, samples=6, seed=1, output=0))
    assert not model.training


def test_mc_predict_output_selector_errors():
    class Pair(nn.Module):
        def forward(self, x):
            return {"a": x, "b": "text"}

    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="'c'"):
        mc_predict(Pair(), x, samples=2, output="c")
    with pytest.raises(TypeError, match="output='b'"):
        mc_predict(Pair(), x, samples=2, output="b")
    with pytest.raises(TypeError, match="output"):
        mc_predict(Pair(), x, samples=2, output=1.5)
    assert mc_predict(Pair(), x, samples=2, output="a").shape == (2, 2, 3)


# ---------------------------------------------------------------- timm and report false positives


class TimmLikeAttention(nn.Module):
    """The shape of timm's Attention: a fused SDPA path and an explicit one calling attn_drop."""

    def __init__(self, dim=8, heads=2, attn_drop=0.0):
        super().__init__()
        self.heads, self.fused_attn = heads, True
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj(x.transpose(1, 2).reshape(n, t, c))


def test_timm_style_attention_is_routed_and_p0_is_not_reported():
    torch.manual_seed(0)
    model = nn.Sequential(TimmLikeAttention(attn_drop=0.2))
    check_patched(model, dict(input=torch.randn(2, 5, 8)), {type(m) for m in model.modules()})
    assert model[0].fused_attn is True and not model[0]._forward_pre_hooks
    quiet = nn.Sequential(TimmLikeAttention(attn_drop=0.0))
    assert patch(quiet).unreplaced == []


def test_a_rate_attribute_that_forward_never_reads_is_not_reported():
    class Net(nn.Module):  # timm's ConvNeXt keeps drop_rate after building its head dropout
        def __init__(self):
            super().__init__()
            self.drop_rate = 0.1
            self.head = nn.Sequential(nn.Linear(4, 4), nn.Dropout(self.drop_rate))

        def forward(self, x):
            return self.head(x)

    report = patch(Net())
    assert report.unreplaced == [] and len(report.replaced) == 1


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "convnext_atto"])
def test_timm_models(arch):
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:  # noqa: BLE001 - timm needs torchvision, which may not import
        pytest.skip(f"timm does not import here: {type(exc).__name__}: {exc}")
    model = timm.create_model(arch, pretrained=False, num_classes=3, drop_rate=0.1,
                              **({"attn_drop_rate": 0.1} if arch.startswith("vit") else {}))
    report = patch(copy.deepcopy(model))
    assert report.unreplaced == []
    check_patched(model, dict(x=torch.randn(1, 3, 224, 224)), {type(m) for m in model.modules()})
