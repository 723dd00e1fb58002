"""dropkit.schedules against each paper's formula, resumption from a state_dict, and bad input."""

import copy
import math

import pytest
import torch
from torch import nn

import dropkit
from dropkit.patch import patch
from dropkit.schedules import (
    Constant,
    CurriculumDropout,
    DepthScaling,
    EarlyDropout,
    LateDropout,
    LinearWarmup,
)


def net(*rates):
    return nn.Sequential(*[m for p in rates for m in (nn.Linear(4, 4), nn.Dropout(p))])


def run(model, schedule, steps):
    """Rates of every driven layer at steps 0 .. steps-1, read from the modules."""
    out = []
    for t in range(steps):
        if t:
            schedule.step()
        out.append([round(model.get_submodule(n).p, 12) for n in schedule.names])
    return out


def test_constant_keeps_each_base_rate_or_the_given_one():
    model = net(0.1, 0.4)
    assert run(model, Constant(model), 3) == [[0.1, 0.4]] * 3
    assert run(model, Constant(model, p=0.25), 2) == [[0.25, 0.25]] * 2


def test_linear_warmup_matches_the_ramp():
    model = net(0.3)
    expected = [[round(0.3 * min(t / 3, 1), 12)] for t in range(6)]
    assert run(model, LinearWarmup(model, warmup_steps=3), 6) == expected
    # DropBlock's view: keep probability falls linearly from 1 to 1 - p.
    assert [round(1 - r[0], 12) for r in expected[:4]] == [1.0, 0.9, 0.8, 0.7]


def test_early_dropout_constant_and_linear():
    model = net(0.2)
    assert run(model, EarlyDropout(model, cutoff=3, p=0.2), 5) == [[0.2], [0.2], [0.2], [0.0], [0.0]]
    model = net(0.2)
    linear = run(model, EarlyDropout(model, cutoff=4, mode="linear"), 6)
    assert linear == [[0.2], [0.15], [0.1], [0.05], [0.0], [0.0]]


def test_late_dropout():
    model = net(0.5)
    assert run(model, LateDropout(model, start=2), 4) == [[0.0], [0.0], [0.5], [0.5]]


def test_curriculum_dropout_follows_morerio_keep_probability():
    model = net(0.5)
    gamma, theta_bar = 0.3, 0.5
    rates = run(model, CurriculumDropout(model, gamma=gamma), 30)
    for t, (rate,) in enumerate(rates):
        theta = (1 - theta_bar) * math.exp(-gamma * t) + theta_bar
        assert rate == pytest.approx(1 - theta, abs=1e-12)
    assert rates[0] == [0.0] and rates[-1][0] == pytest.approx(0.5, abs=1e-3)


def test_depth_scaling_per_module_linear_rule():
    model = net(0.0, 0.0, 0.0, 0.0, 0.0)
    schedule = DepthScaling(model, p=0.4, per="module", include=nn.Dropout)
    assert run(model, schedule, 2) == [[0.0, 0.1, 0.2, 0.3, 0.4]] * 2
    model = net(0.0, 0.0, 0.0, 0.0)
    # Huang et al.: p_l = l / L * p_L for l = 1..L.
    schedule = DepthScaling(model, p=0.4, start_at_zero=False, per="module", include=nn.Dropout)
    assert run(model, schedule, 1) == [[0.1, 0.2, 0.3, 0.4]]
    single = net(0.0)
    assert DepthScaling(single, p=0.3, per="module", include=nn.Dropout).get_last_rate() == [0.3]


class Block(nn.Module):
    """A pre-norm transformer block as timm writes it: two residual branches, two drop paths."""

    def __init__(self, rate):
        super().__init__()
        self.attn, self.attn_drop, self.mlp = nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 4)
        # timm builds an Identity where the block's rate is 0.
        self.drop_path1 = dropkit.DropPath(rate) if rate > 0 else nn.Identity()
        self.drop_path2 = dropkit.DropPath(rate) if rate > 0 else nn.Identity()


class Stage(nn.Module):
    def __init__(self, rates):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(r) for r in rates])


def test_depth_scaling_one_rate_per_block_as_timm():
    depth, p = 7, 0.3
    model = nn.Module()
    model.blocks = nn.ModuleList([Block(0.05) for _ in range(depth)])
    model.blocks[0] = Block(0.0)
    schedule = DepthScaling(model, p=p)
    # The residual drop paths only (attention dropout untouched), both of block i at p * i / (B - 1).
    assert schedule.names == [f"blocks.{i}.drop_path{k}" for i in range(1, depth) for k in (1, 2)]
    for i in range(1, depth):
        for k in (1, 2):
            rate = getattr(model.blocks[i], f"drop_path{k}").p
            assert rate == pytest.approx(p * i / (depth - 1), abs=1e-15)
        assert model.blocks[i].attn_drop.p == 0.1
    # The paper's rule: p * (i + 1) / B.
    DepthScaling(model, p=p, start_at_zero=False)
    assert model.blocks[6].drop_path1.p == pytest.approx(p)
    assert model.blocks[1].drop_path2.p == pytest.approx(p * 2 / 7)


def test_depth_scaling_counts_blocks_across_stages():
    depths, p = (2, 2, 6, 2), 0.4
    model = nn.Module()
    model.layers = nn.ModuleList([Stage([0.1] * d) for d in depths])
    model.layers[0].blocks[0] = Block(0.0)
    DepthScaling(model, p=p)
    total = sum(depths)
    i = 0
    for s, d in enumerate(depths):
        for j in range(d):
            expected = p * i / (total - 1)
            block = model.layers[s].blocks[j]
            if i:
                assert block.drop_path1.p == pytest.approx(expected) == block.drop_path2.p
            i += 1


def test_depth_scaling_selected_dropouts_of_a_transformer_encoder():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1)
    model = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    schedule = DepthScaling(model, p=0.3, include=nn.Dropout)
    assert len(schedule.names) == 9
    for i in range(3):
        rates = [model.layers[i].dropout.p, model.layers[i].dropout1.p, model.layers[i].dropout2.p]
        assert rates == [pytest.approx(0.15 * i)] * 3
        assert model.layers[i].self_attn.dropout == 0.1  # attention dropout is not a selected layer


def test_depth_scaling_named_blocks_and_bad_options():
    model = nn.Sequential(nn.Linear(2, 2), dropkit.DropPath(0.1), dropkit.DropPath(0.1))
    # Numbered containers: the root's three elements are the blocks.
    assert DepthScaling(model, p=0.4).get_last_rate() == [pytest.approx(0.2), pytest.approx(0.4)]
    assert DepthScaling(model, p=0.4, blocks=["1", "2"]).get_last_rate() == [0.0, pytest.approx(0.4)]
    assert DepthScaling(model, p=0.4, blocks="[12]").get_last_rate() == [0.0, pytest.approx(0.4)]
    with pytest.raises(ValueError, match="'cube'"):
        DepthScaling(model, p=0.4, per="cube")
    with pytest.raises(ValueError, match="per='module'"):
        DepthScaling(model, p=0.4, per="module", blocks="1")
    with pytest.raises(ValueError, match="nope"):
        DepthScaling(model, p=0.4, blocks=["nope"])
    with pytest.raises(ValueError, match="no dropout-family module"):
        DepthScaling(net(0.1), p=0.4)  # no drop path: the default selection is empty


def test_include_filter_and_dropkit_layers():
    model = net(0.1, 0.2)
    patch(model)
    schedule = LateDropout(model, start=1, include="3")
    assert schedule.names == ["3"] and model[1].p == 0.1 and model[3].p == 0.0
    x = torch.randn(2, 4)
    # At rate 0 the patched dropkit layer is the identity in training mode.
    assert torch.equal(model[3](x), x)
    schedule.step()
    assert isinstance(model[3], dropkit.Dropout) and model[3].p == 0.2


def test_schedule_drives_modules_replaced_after_it_was_built():
    model = net(0.3)
    schedule = LinearWarmup(model, warmup_steps=2)
    patch(model)
    schedule.step()
    assert isinstance(model[1], dropkit.Dropout) and model[1].p == pytest.approx(0.15)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: LinearWarmup(m, warmup_steps=5),
        lambda m: EarlyDropout(m, cutoff=6, mode="linear"),
        lambda m: CurriculumDropout(m, gamma=0.2, p=0.4),
        lambda m: LateDropout(m, start=4),
    ],
)
def test_resume_from_state_dict_continues_identically(make):
    model = net(0.3, 0.5)
    schedule = make(model)
    full = run(model, schedule, 10)
    model = net(0.3, 0.5)
    schedule = make(model)
    for _ in range(4):
        schedule.step()
    saved = copy.deepcopy(schedule.state_dict())
    resumed_model = net(0.9, 0.9)  # different base rates: the state must carry the original ones
    resumed = make(resumed_model)
    resumed.load_state_dict(saved)
    assert resumed.last_step == 4
    rest = [[round(resumed_model.get_submodule(n).p, 12) for n in resumed.names]]
    for _ in range(5):
        resumed.step()
        rest.append([round(resumed_model.get_submodule(n).p, 12) for n in resumed.names])
    assert rest == full[4:]


def test_load_state_dict_refuses_other_layers():
    schedule = Constant(net(0.1))
    with pytest.raises(ValueError, match="drives layers"):
        Constant(net(0.1, 0.2)).load_state_dict(schedule.state_dict())


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda m: LinearWarmup(m, warmup_steps=0), "warmup_steps"),
        (lambda m: LinearWarmup(m, warmup_steps=2.5), "2.5"),
        (lambda m: EarlyDropout(m, cutoff=3, mode="cosine"), "cosine"),
        (lambda m: EarlyDropout(m, cutoff=-1), "-1"),
        (lambda m: LateDropout(m, start=True), "True"),
        (lambda m: CurriculumDropout(m, gamma=0.0), "gamma"),
        (lambda m: CurriculumDropout(m, gamma=float("inf")), "inf"),
        (lambda m: Constant(m, p=1.2), "1.2"),
        (lambda m: DepthScaling(m, p=-0.1), "-0.1"),
        (lambda m: Constant(m, include="nothing.*"), "nothing"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(net(0.1))


def test_not_a_model():
    with pytest.raises(TypeError, match="dict"):
        Constant({})
