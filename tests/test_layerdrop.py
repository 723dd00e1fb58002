"""dropkit.LayerDrop (Fan et al., 2019) against its rule written out from the stream words."""

import pytest
import torch
from torch import nn

import dropkit
from dropkit import rng
from dropkit.functional import drop_path_rates


class AddConst(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, scale=1.0):
        return x + self.c * scale


def _stack(p, rule="constant", n=8, seed=3):
    return dropkit.LayerDrop([AddConst(2.0**i) for i in range(n)], p, rule, seed=seed)


@pytest.mark.parametrize("rule", ["constant", "linear", "huang"])
def test_layers_skipped_exactly_as_the_words_say(rule):
    stack = _stack(0.6, rule)
    expected_rates = {"constant": [0.6] * 8, "linear": drop_path_rates(0.6, 8),
                      "huang": drop_path_rates(0.6, 8, "huang")}[rule]
    assert stack.rates() == expected_rates
    offset = 0
    for _ in range(4):
        words = rng.philox_words(3, offset, 8)
        kept = [int(w) >= round(r * 2**32) for w, r in zip(words, expected_rates, strict=True)]
        y = stack(torch.zeros(2, 1, dtype=torch.float64), scale=0.5)
        # Layer i adds 2**i / 2: the sum's bits say which layers ran.
        assert torch.equal(y, torch.full((2, 1), sum(0.5 * 2.0**i for i, k in enumerate(kept) if k),
                                         dtype=torch.float64))
        assert stack.last_kept == kept
        offset += 2  # eight words: two 4-word blocks
        assert int(stack.offset) == offset


def test_eval_and_zero_rate_run_every_layer_and_take_no_words():
    stack = _stack(0.9)
    assert float(stack.eval()(torch.zeros(1))) == 255.0 and int(stack.offset) == 0
    stack.train()
    stack.p = 0.0
    assert float(stack(torch.zeros(1))) == 255.0 and int(stack.offset) == 0


def test_skip_frequency_follows_the_rate():
    stack = _stack(0.3, n=4, seed=11)
    runs = []
    for _ in range(4000):
        stack(torch.zeros(1))
        runs.append(stack.last_kept)
    freq = torch.tensor(runs).double().mean(0)
    assert torch.all((freq - 0.7).abs() < 5 * (0.21 / 4000) ** 0.5), freq


def test_in_the_family_and_resumable():
    stack = _stack(0.5)
    layers = dropkit.patch.dropout_layers(nn.Sequential(stack))
    assert [(layer.name, layer.p) for layer in layers] == [("0", 0.5)]
    for _ in range(3):
        stack(torch.zeros(1))
    other = _stack(0.5, seed=99)
    other.load_state_dict(stack.state_dict())
    stack(torch.zeros(1))
    other(torch.zeros(1))
    assert other.last_kept == stack.last_kept


def test_bad_arguments():
    with pytest.raises(ValueError, match="1.5"):
        dropkit.LayerDrop([nn.Identity()], 1.5)
    with pytest.raises(ValueError, match="'cubic'"):
        dropkit.LayerDrop([nn.Identity()], 0.1, "cubic")
    with pytest.raises(TypeError, match="int"):
        dropkit.LayerDrop([nn.Identity(), 3], 0.1)
    with pytest.raises(TypeError, match="none"):
        dropkit.LayerDrop([], 0.1)


def test_mc_predict_runs_layer_drop_pass_by_pass():
    from dropkit.uncertainty import mc_predict

    stack = dropkit.LayerDrop([AddConst(2.0**i) for i in range(6)], 0.5, seed=1).eval()
    # One draw per call skips layers for the whole batch: replicated rows would share it.
    with pytest.warns(UserWarning, match="one mask for a whole batch"):
        samples = mc_predict(stack, torch.zeros(3, 1, dtype=torch.float64), samples=8)
    assert samples.shape[:2] == (8, 3)
    sums = samples[:, :, 0]
    assert torch.equal(sums, sums[:, :1].expand_as(sums))  # every row of a pass skips the same layers
    assert len(set(sums[:, 0].tolist())) > 1  # passes differ
