"""dropkit in the Hugging Face ``Trainer``: schedules stepped, rates logged, masks resumed exactly.

:class:`DropkitCallback` is a ``transformers.TrainerCallback``. It keeps dropkit's rate
schedules at the Trainer's step (or epoch) count, adds the current rates to the Trainer's
logs, and keeps what an exact resume needs, the schedules' states and the position of every
seeded dropkit stream, in ``trainer_state.json`` (``TrainerState.stateful_callbacks["dropkit"]``),
which ``Trainer(...).train(resume_from_checkpoint=...)`` reads back and ``from_pretrained``
never looks at. The weights file of a patched model has no dropkit keys (see
:func:`dropkit.patch.patch`), so every checkpoint loads in plain transformers.

For a model saved by hand with ``save_pretrained``, :func:`save_streams` writes the positions
to a side file in the same directory and :func:`load_streams` reads them back.

Importing this module imports transformers; ``import dropkit`` never does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from dropkit.integrations.common import (
    ScheduleDriver,
    dropout_rates,
    load_stream_positions,
    stream_positions,
)
from dropkit.schedules import RateSchedule

__all__ = ["DropkitCallback", "save_streams", "load_streams", "STATE_KEY", "STREAMS_FILE"]

# Where the callback's state lives in TrainerState.stateful_callbacks (saved in trainer_state.json).
STATE_KEY = "dropkit"
# The side file save_streams writes next to a save_pretrained checkpoint.
STREAMS_FILE = "dropkit_streams.json"


class DropkitCallback(TrainerCallback):
    """A ``TrainerCallback`` that drives dropkit's rate schedules and resumes dropkit's masks.

    Schedules: with ``every="step"`` each schedule is at step ``t = state.global_step`` after
    each optimizer step (its rates are ``rates_at(t)``); with ``every="epoch"``, at the number of
    completed epochs. Accumulated micro-batches count as one step, as the Trainer counts them.

    Logging: each time the Trainer logs, the current rate of every dropout-family module (of
    the scheduled modules when there are schedules) is added to the logs as ``dropout/<name>``,
    so it is in ``state.log_history`` and reaches every callback after this one; :meth:`attach`
    puts the callback before the reporting integrations (TensorBoard, W&B, ...).

    Checkpoints: when the Trainer is about to save, the schedules' states and
    :func:`dropkit.integrations.common.stream_positions` are written to
    ``state.stateful_callbacks["dropkit"]``, which the Trainer saves in ``trainer_state.json``;
    on ``train(resume_from_checkpoint=...)`` they are put back at the start of training, so the
    resumed run draws the masks the uninterrupted run would have drawn.

    Args:
        schedules: :class:`dropkit.schedules.RateSchedule` objects to drive (none: only logging
            and stream positions).
        every: ``"step"`` or ``"epoch"``.
        log_rates: add the rates to the Trainer's logs.

    Shape:
        Not applicable.

    Example:
        >>> import transformers
        >>> from dropkit.schedules import LinearWarmup
        >>> config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...                                  num_attention_heads=2, intermediate_size=16)
        >>> model = transformers.BertForSequenceClassification(config)
        >>> callback = DropkitCallback(LinearWarmup(model, warmup_steps=100))
        >>> callback.driver.every, len(callback.driver.schedules)
        ('step', 1)
    """

    def __init__(
        self,
        schedules: RateSchedule | Iterable[RateSchedule] = (),
        *,
        every: str = "step",
        log_rates: bool = True,
    ) -> None:
        self.driver = ScheduleDriver(schedules, every=every)
        if not isinstance(log_rates, bool):
            raise TypeError(f"log_rates must be a bool, got {log_rates!r}")
        self.log_rates = log_rates
        self.model: nn.Module | None = None

    def attach(self, trainer: Any) -> DropkitCallback:
        """Insert the callback right after the Trainer's flow callback (before the reporting
        integrations, so that they log the rates too); returns the callback."""
        callbacks = trainer.callback_handler.callbacks
        if any(c is self for c in callbacks):
            raise ValueError("this DropkitCallback is already one of the trainer's callbacks")
        flow = [i for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)]
        callbacks.insert(flow[-1] + 1 if flow else 0, self)
        return self

    def _count(self, state: Any, at_epoch_end: bool) -> int:
        if self.driver.every == "step":
            return int(state.global_step)
        epoch = state.epoch or 0.0
        return int(round(epoch)) if at_epoch_end else int(math.floor(epoch + 1e-9))

    def _record(self, state: Any) -> None:
        streams = stream_positions(self.model) if self.model is not None else {}
        state.stateful_callbacks[STATE_KEY] = {"driver": self.driver.state_dict(), "streams": streams}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        saved = state.stateful_callbacks.get(STATE_KEY)
        if isinstance(saved, dict):  # resumed from a checkpoint this callback wrote
            if self.driver.schedules:
                self.driver.load_state_dict(saved["driver"])
            if model is not None:
                load_stream_positions(model, saved["streams"])
        self.driver.advance(self._count(state, at_epoch_end=False))

    def on_step_end(self, args, state, control, **kwargs):
        if self.driver.every == "step":
            self.driver.advance(self._count(state, at_epoch_end=False))
        if control.should_save:
            self._record(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.driver.every == "epoch":
            self.driver.advance(self._count(state, at_epoch_end=True))
        if control.should_save:
            self._record(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.log_rates or logs is None:
            return
        model = kwargs.get("model") or self.model
        rates = self.driver.rates() if self.driver.schedules else (
            dropout_rates(model) if model is not None else {})
        logs.update(rates)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(rates)


def save_streams(model: nn.Module, save_directory: str | os.PathLike) -> str:
    """Write the stream positions of ``model``'s seeded dropkit modules to
    ``save_directory/dropkit_streams.json`` (beside a ``save_pretrained`` checkpoint, which does
    not hold them); returns the file's path. transformers ignores the file.

    Shape:
        Not applicable.

    Example:
        >>> import tempfile
        >>> from dropkit import Dropout
        >>> with tempfile.TemporaryDirectory() as d:
        ...     os.path.basename(save_streams(nn.Sequential(Dropout(0.1, seed=1)), d))
        'dropkit_streams.json'
    """
    path = os.path.join(os.fspath(save_directory), STREAMS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stream_positions(model), f, indent=1, sort_keys=True)
    return path


def load_streams(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Set ``model``'s seeded streams from the file :func:`save_streams` wrote (after
    ``from_pretrained`` and ``patch(model, seed=...)``); a ValueError names any mismatch.

    Shape:
        Not applicable.

    Example:
        >>> import tempfile, torch
        >>> from dropkit import Dropout
        >>> a, b = nn.Sequential(Dropout(0.5, seed=1)), nn.Sequential(Dropout(0.5, seed=1))
        >>> _ = a(torch.ones(16))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     load_streams(b, os.path.dirname(save_streams(a, d)))
        >>> torch.equal(a(torch.ones(16)), b(torch.ones(16)))
        True
    """
    path = os.path.join(os.fspath(save_directory), STREAMS_FILE)
    with open(path, encoding="utf-8") as f:
        load_stream_positions(model, json.load(f))
