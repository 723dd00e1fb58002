"""dropkit in the real pytorch-lightning Trainer: one short CPU fit with the callback, a resume
from its checkpoint that matches the uninterrupted run, and MC dropout from ``predict_step``."""

import csv

import pytest
import torch
from interop_helpers import real
from torch import nn

from dropkit.integrations.common import stream_positions
from dropkit.patch import patch
from dropkit.schedules import LinearWarmup
from dropkit.uncertainty import mc_predict

ROWS, BATCH, WARMUP, P = 32, 8, 6, 0.4


@pytest.fixture
def pl():
    return real("pytorch_lightning")


def module_class(pl):
    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(P), nn.Linear(32, 3))
            patch(self.net, seed=0)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def predict_step(self, batch, batch_idx):
            x, _ = batch
            return mc_predict(self.net, x, samples=8, seed=batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Classifier


def data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(ROWS, 8, generator=g), torch.randint(0, 3, (ROWS,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def trainer(pl, root, callbacks, epochs=2):
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(root, name="logs"),
        callbacks=[*callbacks, checkpoints], log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False,
    )


def logged_rates(root):
    (path,) = root.glob("logs/*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    return [(int(r["step"]), float(r["dropout/2"])) for r in rows if r.get("dropout/2")]


def test_fit_steps_logs_and_resumes_exactly(pl, tmp_path):
    from dropkit.integrations.lightning import DropkitCallback

    Classifier = module_class(pl)
    straight = Classifier()
    callback = DropkitCallback(LinearWarmup(straight.net, warmup_steps=WARMUP))
    trainer(pl, tmp_path / "a", [callback]).fit(straight, data())
    # LinearWarmup: after optimizer step t the rate is P * min(t / WARMUP, 1).
    steps = ROWS // BATCH * 2
    expected = [P * min(t / WARMUP, 1.0) for t in range(1, steps + 1)]
    assert [r for _, r in logged_rates(tmp_path / "a")] == pytest.approx(expected, abs=1e-7)
    assert straight.net[2].p == pytest.approx(P)

    (first,) = (tmp_path / "a" / "ckpt").glob("epoch=0-*.ckpt")
    saved = torch.load(first, weights_only=False)
    (state,) = [v for k, v in saved["callbacks"].items() if "DropkitCallback" in k]
    assert state["schedules"][0]["last_step"] == ROWS // BATCH
    assert saved["state_dict"]["net.2.offset"] > 0  # the stream travels with the module's weights

    resumed = Classifier()
    resumed_callback = DropkitCallback(LinearWarmup(resumed.net, warmup_steps=WARMUP))
    trainer(pl, tmp_path / "b", [resumed_callback]).fit(resumed, data(), ckpt_path=str(first))
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert stream_positions(resumed) == stream_positions(straight)
    assert logged_rates(tmp_path / "b") == logged_rates(tmp_path / "a")[ROWS // BATCH:]

    # Control: resuming without the callback keeps the rate at P during the warm-up steps.
    control = Classifier()
    trainer(pl, tmp_path / "c", []).fit(control, data(), ckpt_path=str(first))
    pairs = zip(straight.parameters(), control.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_epoch_schedule_and_bad_state(pl, tmp_path):
    from dropkit.integrations.lightning import DropkitCallback

    module = module_class(pl)()
    callback = DropkitCallback(LinearWarmup(module.net, warmup_steps=4), every="epoch")
    trainer(pl, tmp_path, [callback], epochs=3).fit(module, data())
    assert module.net[2].p == pytest.approx(P * 3 / 4)
    (path,) = tmp_path.glob("logs/*/metrics.csv")
    rates = [float(r["dropout/2"]) for r in csv.DictReader(path.open()) if r.get("dropout/2")]
    assert rates == pytest.approx([P / 4, P / 2, P * 3 / 4])
    with pytest.raises(ValueError, match="every="):
        DropkitCallback(LinearWarmup(module.net, warmup_steps=4)).load_state_dict(callback.state_dict())


def test_predict_step_mc_dropout(pl, tmp_path):
    module = module_class(pl)()
    modes = [m.training for m in module.modules()]
    out = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(module, data())
    assert len(out) == ROWS // BATCH and out[0].shape == (8, BATCH, 3)
    assert out[0].std(dim=0).min() > 0  # dropout was on for the passes
    assert [m.training for m in module.modules()] == modes  # every flag put back after
    # The same call outside Lightning (no inference mode, no Trainer) gives the same samples.
    x = next(iter(data()))[0]
    reference = mc_predict(module.net.eval(), x, samples=8, seed=0)
    torch.testing.assert_close(out[0], reference, rtol=0, atol=0)
