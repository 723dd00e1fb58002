"""dropkit.integrations.common: the torch-only parts the framework callbacks share."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from dropkit.integrations.common import (
    ScheduleDriver,
    dropout_rates,
    load_stream_positions,
    stream_positions,
)
from dropkit.patch import dropout_layers, patch
from dropkit.schedules import EarlyDropout, LinearWarmup


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.4), nn.Linear(8, 8), nn.Dropout(0.2))


def test_dropout_rates_names_every_family_module():
    model = net()
    patch(model, include="3", seed=1)
    assert dropout_rates(model) == {f"dropout/{n}": p for n, _, p in dropout_layers(model)}
    assert dropout_rates(model, prefix="") == {"1": pytest.approx(0.4), "3": pytest.approx(0.2)}
    with pytest.raises(TypeError, match="prefix"):
        dropout_rates(model, prefix=None)


def test_stream_positions_resume_the_next_masks():
    a, b = net(), net()
    patch(a, seed=5)
    patch(b, seed=9)
    x = torch.randn(4, 8)
    a.train()(x)
    assert set(stream_positions(a)) == {"1", "3"}
    assert all(p["offset"] > 0 for p in stream_positions(a).values())
    load_stream_positions(b, stream_positions(a))
    assert stream_positions(b) == stream_positions(a)
    assert torch.equal(a(x), b.train()(x))  # the same next masks (same weights from net())
    assert stream_positions(net()) == {}  # torch's layers own no stream


def test_load_stream_positions_refuses_a_mismatch_and_changes_nothing():
    model = net()
    patch(model, seed=0)
    before = stream_positions(model)
    with pytest.raises(ValueError, match=r"missing \['3'\], unknown \['9'\]"):
        load_stream_positions(model, {"1": {"seed": 1, "offset": 2}, "9": {"seed": 1, "offset": 2}})
    with pytest.raises(ValueError, match="positions\\['3'\\]"):
        load_stream_positions(model, {"1": {"seed": 1, "offset": 2}, "3": {"seed": 1}})
    with pytest.raises(ValueError, match="seed"):
        load_stream_positions(model, {"1": {"seed": 1, "offset": 2}, "3": {"seed": -1, "offset": 0}})
    with pytest.raises(TypeError, match="mapping"):
        load_stream_positions(model, [("1", 0)])
    assert stream_positions(model) == before
    big = {"1": {"seed": 2**64 - 1, "offset": 2**63 + 5}, "3": {"seed": 0, "offset": 0}}
    load_stream_positions(model, big)  # unsigned 64-bit positions round-trip
    assert stream_positions(model) == big


def test_driver_follows_the_framework_count():
    model = net()
    driver = ScheduleDriver(LinearWarmup(model, warmup_steps=4), every="step")
    for count, expected in [(0, 0.0), (1, 0.1), (1, 0.1), (3, 0.3), (9, 0.4), (2, 0.2)]:
        driver.advance(count)  # a framework counter: repeated (accumulation), or lower (resume)
        assert model[1].p == pytest.approx(expected)  # LinearWarmup: 0.4 * min(t / 4, 1)
        assert model[3].p == pytest.approx(expected / 2)
    assert driver.rates() == {"dropout/1": model[1].p, "dropout/3": model[3].p}


def test_driver_state_round_trip_and_checks():
    model = net()
    schedules = [EarlyDropout(model, cutoff=3, include="1"), LinearWarmup(model, warmup_steps=2, include="3")]
    driver = ScheduleDriver(schedules, every="epoch")
    driver.advance(2)
    state = driver.state_dict()
    other = net()
    again = ScheduleDriver(
        [EarlyDropout(other, cutoff=3, include="1"), LinearWarmup(other, warmup_steps=2, include="3")],
        every="epoch",
    )
    again.load_state_dict(state)
    assert again.rates() == driver.rates() and [s.last_step for s in again.schedules] == [2, 2]
    with pytest.raises(ValueError, match="every="):
        ScheduleDriver(schedules, every="step").load_state_dict(state)
    with pytest.raises(ValueError, match="2 schedule states, but this driver has 1"):
        ScheduleDriver(schedules[0], every="epoch").load_state_dict(state)
    with pytest.raises(ValueError, match="every must be"):
        ScheduleDriver(schedules, every="batch")
    with pytest.raises(TypeError, match="RateSchedule"):
        ScheduleDriver([model])
    with pytest.raises(ValueError, match="count"):
        driver.advance(-1)
    with pytest.raises(ValueError, match="count"):
        driver.advance(True)


def test_import_dropkit_loads_no_integration():
    code = (
        "import sys, dropkit; dropkit.Dropout; dropkit.patch; dropkit.schedules; "
        "print(sorted(m for m in sys.modules if m.startswith('dropkit.integrations') "
        "or m.split('.')[0] in ('transformers', 'lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
