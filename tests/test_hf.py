"""A Hugging Face BERT built from a tiny config (no download): patch, train, MC-dropout predict."""

import pytest
import torch
from torch import nn

import dropkit
from dropkit.patch import dropout_layers, patch, set_dropout, unpatch
from dropkit.uncertainty import mc_predict

transformers = pytest.importorskip(
    "transformers", reason="transformers is an optional test dependency ([dev] extra)"
)


class Logits(nn.Module):
    """BERT's classifier returns an output object; mc_predict wants a tensor."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).logits


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def test_patch_replaces_bert_dropouts_and_reports_attention():
    model = tiny_bert()
    before = dropout_layers(model)
    report = patch(model, seed=0)
    # embeddings + 2 layers x (attention probs, attention output, ffn output) + classifier
    assert len(report.replaced) == len(before) == 8
    assert all(type(model.get_submodule(r.name)) is dropkit.Dropout for r in report.replaced)
    assert [(layer.name, layer.p) for layer in dropout_layers(model)] == [(n, p) for n, _, p in before]
    # The attention layers pass self.dropout.p to their attention function; patch routes that
    # function to dropkit's through the library's AttentionInterface, so nothing is left over.
    assert report.unreplaced == [] and model.config._attn_implementation.startswith("dropkit|")
    assert len(unpatch(model)) == 8 and all(type(model.get_submodule(n)) is nn.Dropout for n, _, _ in before)


def test_patched_bert_trains():
    model = tiny_bert()
    patch(model, seed=1)
    ids = torch.randint(0, 50, (4, 12))
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert all(model.get_submodule(n).offset.item() > 0 for n in ("bert.embeddings.dropout", "dropout"))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, first[n])]
    assert "classifier.weight" in changed and "bert.embeddings.word_embeddings.weight" in changed
    # Two training passes draw different masks; rate 0 everywhere makes training equal evaluation.
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        set_dropout(model, 0.0)
        train_out = model(input_ids=ids).logits
        assert torch.allclose(train_out, model.eval()(input_ids=ids).logits, atol=1e-6)


def test_mc_predict_gives_uncertainty_on_patched_bert():
    model = tiny_bert()
    patch(model, seed=2)
    wrapped = Logits(model).eval()
    ids = torch.randint(0, 50, (3, 10))
    samples = mc_predict(wrapped, ids, samples=8, seed=0)
    assert samples.shape == (8, 3, 3)
    assert samples.std(dim=0).min() > 0
    assert torch.equal(mc_predict(wrapped, ids, samples=8, seed=0), samples)
    assert not model.training  # mc_predict put every flag back
    set_dropout(model, 0.0)
    with torch.no_grad():
        deterministic = wrapped(ids)
    torch.testing.assert_close(mc_predict(wrapped, ids, samples=4, seed=0), deterministic.expand(4, 3, 3))
