"""dropkit in Lightning: schedules stepped by the Trainer, rates logged, state in the checkpoint.

:class:`DropkitCallback` is a Lightning ``Callback`` (of ``lightning.pytorch`` when the
``lightning`` package is installed, else of ``pytorch_lightning``). The seeded streams need
nothing from it: they are buffers of the ``LightningModule``, so a Lightning checkpoint holds
them and ``Trainer.fit(ckpt_path=...)`` resumes the exact masks.

MC dropout from ``predict_step`` needs no wrapper: :func:`dropkit.uncertainty.mc_predict` turns
the dropout modules on for its passes (and back off after) inside Lightning's eval mode and
inference mode::

    def predict_step(self, batch, batch_idx):
        x, _ = batch
        return mc_predict(self.net, x, samples=30, seed=batch_idx)   # (T, N, classes)

Importing this module imports Lightning; ``import dropkit`` never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone pytorch-lightning package
    from pytorch_lightning import Callback

from dropkit.integrations.common import ScheduleDriver, dropout_rates
from dropkit.schedules import RateSchedule

__all__ = ["DropkitCallback"]


class DropkitCallback(Callback):
    """A Lightning ``Callback`` that drives dropkit's rate schedules and logs the rates.

    With ``every="step"`` each schedule is at step ``t = trainer.global_step`` after each
    optimizer step (batches accumulated into one step count once); with ``every="epoch"``, at
    the number of completed epochs. The rates of the scheduled modules (of every dropout-family
    module when there is no schedule) are logged with ``LightningModule.log_dict`` as
    ``dropout/<name>``, per step or per epoch. The schedules' states are the callback's
    ``state_dict``, which Lightning keeps in its checkpoints and restores on resume.

    Args:
        schedules: :class:`dropkit.schedules.RateSchedule` objects to drive.
        every: ``"step"`` or ``"epoch"``.
        log_rates: log the rates to the Trainer's loggers.

    Shape:
        Not applicable.

    Example:
        >>> from torch import nn
        >>> from dropkit.schedules import EarlyDropout
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2))
        >>> callback = DropkitCallback(EarlyDropout(net, cutoff=100), every="step")
        >>> callback.state_dict()["schedules"][0]["cutoff"]
        100
    """

    def __init__(
        self,
        schedules: RateSchedule | Iterable[RateSchedule] = (),
        *,
        every: str = "step",
        log_rates: bool = True,
    ) -> None:
        super().__init__()
        self.driver = ScheduleDriver(schedules, every=every)
        if not isinstance(log_rates, bool):
            raise TypeError(f"log_rates must be a bool, got {log_rates!r}")
        self.log_rates = log_rates

    def _rates(self, pl_module: Any) -> dict[str, float]:
        return self.driver.rates() if self.driver.schedules else dropout_rates(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Put the schedules at the Trainer's count (0, or the resumed run's)."""
        every = self.driver.every
        self.driver.advance(trainer.global_step if every == "step" else trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Per step: move to ``trainer.global_step`` and log the rates."""
        if self.driver.every == "step":
            self.driver.advance(trainer.global_step)
            if self.log_rates:
                pl_module.log_dict(self._rates(pl_module), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Per epoch: move to the number of completed epochs and log the rates."""
        if self.driver.every == "epoch":
            self.driver.advance(trainer.current_epoch + 1)
            if self.log_rates:
                pl_module.log_dict(self._rates(pl_module), on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        """The schedules' states (Lightning saves it in the checkpoint's ``callbacks``)."""
        return self.driver.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it when resuming)."""
        self.driver.load_state_dict(state_dict)
