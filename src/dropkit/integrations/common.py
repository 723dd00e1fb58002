"""What the framework callbacks share: schedules driven by the framework's own counter, the rates
to log, and the streams' positions a checkpoint keeps. Needs torch only.

A framework counts optimizer steps (``global_step``) and epochs and restores those counters when
it resumes a run. :class:`ScheduleDriver` moves each schedule to the framework's count rather
than counting calls itself, so gradient accumulation (several batches per step) and a resumed
run (which starts at the checkpoint's step) give the rates an uninterrupted run would have.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dropkit import _torch
from dropkit._select import family_modules, get_rate
from dropkit.layers._base import StreamModule
from dropkit.rng import check_seed, seed_to_signed
from dropkit.schedules import RateSchedule

__all__ = ["ScheduleDriver", "dropout_rates", "stream_positions", "load_stream_positions"]

_EVERY = ("step", "epoch")


def dropout_rates(model: nn.Module, prefix: str = "dropout/") -> dict[str, float]:
    """The current rate of every dropout-family module of ``model``, keyed ``prefix + name``.

    The keys are what the callbacks log (one curve per layer in TensorBoard, W&B, ...).

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.25))
        >>> dropout_rates(net)
        {'dropout/1': 0.25}
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    return {prefix + name: get_rate(module) for name, module in family_modules(model)}


def _seeded(model: nn.Module) -> Iterable[tuple[str, StreamModule]]:
    for name, module in model.named_modules():
        if isinstance(module, StreamModule) and _torch.buffer_slots(module).get("seed") is not None:
            yield name, module


def stream_positions(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{name: {"seed": s, "offset": o}}`` for every dropkit module of ``model`` that owns a stream.

    Plain ints (JSON-safe, unsigned 64-bit), read from each module's ``seed`` / ``offset``
    buffers: the position from which its next mask is drawn.

    Shape:
        Not applicable.

    Example:
        >>> from dropkit import Dropout
        >>> net = nn.Sequential(nn.Linear(4, 4), Dropout(0.5, seed=7))
        >>> _ = net(torch.ones(2, 4))
        >>> stream_positions(net)  # 8 words: two 4-word blocks
        {'1': {'seed': 7, 'offset': 2}}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: module.stream_state() for name, module in _seeded(model)}  # type: ignore[misc]


def load_stream_positions(model: nn.Module, positions: Mapping[str, Mapping[str, int]]) -> None:
    """Set the streams of ``model``'s seeded dropkit modules to ``positions`` (from
    :func:`stream_positions`); the next masks are those the saved run would have drawn next.

    The names must be exactly the model's seeded modules: a ValueError lists the difference
    and nothing is changed.

    Shape:
        Not applicable.

    Example:
        >>> from dropkit import Dropout
        >>> a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=0)
        >>> _ = a(torch.ones(8))
        >>> load_stream_positions(b, stream_positions(a))
        >>> torch.equal(a(torch.ones(8)), b(torch.ones(8)))
        True
    """
    if not isinstance(positions, Mapping):
        kind = type(positions).__name__
        raise TypeError(f"positions must be a mapping name -> {{'seed', 'offset'}}, got {kind}")
    modules = dict(_seeded(model))
    if set(modules) != set(positions):
        missing, extra = sorted(set(modules) - set(positions)), sorted(set(positions) - set(modules))
        raise ValueError(
            f"positions do not match the model's seeded modules: missing {missing}, unknown {extra}"
        )
    values = {}
    for name, position in positions.items():
        if not isinstance(position, Mapping) or set(position) != {"seed", "offset"}:
            raise ValueError(f"positions[{name!r}] must be {{'seed': int, 'offset': int}}, got {position!r}")
        values[name] = (check_seed(position["seed"]), check_seed(position["offset"]))
    with torch.no_grad():
        for name, (seed, offset) in values.items():
            modules[name].seed.fill_(seed_to_signed(seed))
            modules[name].offset.fill_(seed_to_signed(offset))


class ScheduleDriver:
    """Keeps dropkit rate schedules at a training framework's step (or epoch) count.

    With ``every="step"`` schedule ``k`` is at step ``t`` after the framework's ``t``-th
    optimizer step, so its rates are ``rates_at(t)``; with ``every="epoch"``, after the ``t``-th
    completed epoch. :meth:`advance` is given the framework's counter, not called once per
    event: batches accumulated into one optimizer step count once, and a run resumed at step
    ``t`` continues from ``rates_at(t)``.

    Args:
        schedules: the :class:`dropkit.schedules.RateSchedule` objects to drive (one or several).
        every: ``"step"`` (optimizer steps) or ``"epoch"``.
        prefix: the prefix of the rate names :meth:`rates` returns for logging.

    Shape:
        Not applicable.

    Example:
        >>> from dropkit.schedules import LinearWarmup
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.4))
        >>> driver = ScheduleDriver(LinearWarmup(net, warmup_steps=4))
        >>> driver.advance(2)  # the framework's global step is 2
        >>> round(net[1].p, 6), driver.rates()
        (0.2, {'dropout/1': 0.2})
    """

    def __init__(
        self, schedules: RateSchedule | Iterable[RateSchedule] = (), *, every: str = "step",
        prefix: str = "dropout/",
    ) -> None:
        if isinstance(schedules, RateSchedule):
            schedules = [schedules]
        self.schedules = list(schedules)
        bad = [type(s).__name__ for s in self.schedules if not isinstance(s, RateSchedule)]
        if bad:
            raise TypeError(f"schedules must be dropkit.schedules.RateSchedule objects, got {bad}")
        if every not in _EVERY:
            raise ValueError(f"every must be 'step' or 'epoch', got {every!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.every = every
        self.prefix = prefix

    def advance(self, count: int) -> None:
        """Move every schedule to step ``count`` (the framework's step or epoch counter)."""
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        for schedule in self.schedules:
            if schedule.last_step != count:
                schedule.last_step = int(count) - 1
                schedule.step()

    def rates(self) -> dict[str, float]:
        """The current rate of every module the schedules drive, keyed ``prefix + name``."""
        out: dict[str, float] = {}
        for schedule in self.schedules:
            for name in schedule.names:
                out[self.prefix + name] = get_rate(schedule.model.get_submodule(name))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The schedules' states, in order (what a framework checkpoint keeps)."""
        return {"every": self.every, "schedules": [s.state_dict() for s in self.schedules]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a ValueError if it was saved for other schedules."""
        saved = state.get("schedules") if isinstance(state, Mapping) else None
        if not isinstance(saved, list) or len(saved) != len(self.schedules):
            count = len(saved) if isinstance(saved, list) else saved
            raise ValueError(
                f"state holds {count!r} schedule states, but this driver has {len(self.schedules)}"
            )
        if state.get("every") != self.every:
            saved_every = state.get("every")
            raise ValueError(f"state was saved with every={saved_every!r}, this driver has {self.every!r}")
        for schedule, schedule_state in zip(self.schedules, saved, strict=True):
            schedule.load_state_dict(dict(schedule_state))
