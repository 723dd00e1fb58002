"""The Position value and the stream protocol: every stream's take() gives a Position of the words
it reserved, and a layer draws from a lent stream through lend_stream()."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit import rng
from dropkit.rng import BufferStream, DrawnStream, Position, Stream, TensorStream, open_stream

U64 = 2**64


@pytest.mark.parametrize("seed, offset", [(0, 0), (5, 7), (U64 - 1, U64 - 1), (2**63, 2**63 - 1)])
def test_position_conversions_round_trip_the_bits(seed, offset):
    p = Position(seed, offset)
    on = p.on("cpu")
    assert on.seed.dtype == torch.int64 and on.seed.dim() == 0
    # two's complement bits, computed independently of dropkit
    assert int(on.seed) == (seed - U64 if seed >= 2**63 else seed)
    assert int(on.offset) == (offset - U64 if offset >= 2**63 else offset)
    assert on.host() == p and on.host().on_host and not on.on_host
    assert p.host() == p and p == (seed, offset)
    same = torch.tensor(3)
    assert Position(same, 1).on("cpu").seed is same  # a tensor is kept where it is


def test_every_stream_take_returns_the_position_it_reserved():
    streams = [
        Stream(11, 4),
        BufferStream(torch.tensor(11), torch.tensor(4)),
        TensorStream(torch.tensor(11), torch.tensor(4)),
        open_stream(11, 4, None, torch.device("cpu")),
    ]
    for stream in streams:
        first, second = stream.take(5), stream.take(1)
        assert isinstance(first, Position) and isinstance(second, Position), type(stream).__name__
        # 5 words take ceil(5 / 4) = 2 blocks: the next draw starts 2 blocks later
        assert first.host() == (11, 4) and second.host() == (11, 6), type(stream).__name__
    drawn = DrawnStream(torch.Generator().manual_seed(0))
    assert isinstance(drawn.take(1), Position)


def test_every_stream_class_declares_the_protocol_signature():
    from dropkit.layers import _base

    expected = list(inspect.signature(rng.StreamProtocol.take).parameters)
    classes = [Stream, DrawnStream, BufferStream, TensorStream, rng.TracedStream,
               _base._RecordingStream, _base._ReplayStream]
    for cls in classes:
        sig = inspect.signature(cls.take)
        assert list(sig.parameters) == expected, cls.__name__
        assert sig.return_annotation in ("Position", Position), cls.__name__


def test_the_traced_stream_refuses():
    with pytest.raises(RuntimeError, match="cannot be traced"):
        rng.TracedStream().take(4)


def test_open_stream_stays_importable_from_its_old_place():
    from dropkit.functional import _checks

    assert _checks.open_stream is rng.open_stream


def test_a_lent_stream_gives_the_masks_of_a_layer_seeded_with_it():
    x = torch.ones(64)
    layer = dropkit.Dropout(0.5, seed=3)
    with layer.lend_stream(Stream(9)):
        lent = [layer(x), layer(x)]
    reference = dropkit.Dropout(0.5, seed=9)
    assert all(torch.equal(a, reference(x)) for a in lent)
    # the layer's own stream did not move, and it resumes it afterwards
    assert layer.stream_state() == {"seed": 3, "offset": 0}
    assert torch.equal(layer(x), dropkit.Dropout(0.5, seed=3)(x))


def test_lending_nests_and_unseeded_layers_borrow_too():
    x = torch.ones(32)
    layer = dropkit.Dropout(0.5)
    with layer.lend_stream(Stream(1)):
        with layer.lend_stream(Stream(2)):
            inner = layer(x)
        outer = layer(x)
    assert torch.equal(inner, dropkit.Dropout(0.5, seed=2)(x))
    assert torch.equal(outer, dropkit.Dropout(0.5, seed=1)(x))
    assert layer.seed is None and layer._lent is None


def test_lend_stream_refuses_what_is_not_a_stream():
    with pytest.raises(TypeError, match="take"):
        with dropkit.Dropout(0.5).lend_stream((1, 2)):
            pass


def test_a_lent_stream_is_recorded_and_replayed_under_checkpointing():
    layer = dropkit.Dropout(0.5, seed=0)
    x = torch.randn(16, requires_grad=True)
    with layer.lend_stream(Stream(21)):
        y = checkpoint(lambda t: layer(t) * 2, x, use_reentrant=False)
        y.sum().backward()
    expected = dropkit.Dropout(0.5, seed=21)(x.detach())
    assert torch.equal(y.detach(), expected * 2)
    assert torch.equal(x.grad, (expected != 0).float() * 2 * 2)  # scale 2, times the outer 2


def test_mc_prediction_lends_streams_instead_of_writing_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), dropkit.Dropout(0.5, seed=1))
    seed_buffer, offset_buffer = model[1].seed, model[1].offset
    x = torch.randn(3, 4)
    first = dropkit.uncertainty.mc_predict(model, x, samples=3, seed=7)
    second = dropkit.uncertainty.mc_predict(model, x, samples=3, seed=7)
    assert model[1].seed is seed_buffer and model[1].offset is offset_buffer
    assert int(model[1].offset) == 0 and model[1]._lent is None
    assert torch.equal(first, second) and not torch.equal(first[0], first[1])
