"""Train and evaluate one model at one dropout rate: the unit of work of ``dropkit demo/train``.

The models (``TrainConfig.model``): ``"guide-mlp"``, the guide's MLP (one hidden layer);
``"mlp"``, :class:`~dropkit.app.models.WideMLPWithDropout` (two wide hidden layers, the demo's
default); ``"cnn"``, the guide's CNN on square one-channel images given as flat rows (sklearn's
8x8 digits).

Runs with the same seed differ only in dropout: the weights are initialized under
``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so the caller's generator is left
alone), minibatches are shuffled by the Philox stream ``derive_seed(seed, "shuffle", epoch)``,
and each dropout layer owns the stream ``derive_seed(seed, "dropout", layer)``. Changing p
therefore changes the masks and nothing else: not the initial weights, not the batch order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dropkit.app.data import Dataset, Standardizer, permutation
from dropkit.app.errors import DataError
from dropkit.app.models import SimpleCNNWithDropout, SimpleModelWithDropout, WideMLPWithDropout
from dropkit.layers import Dropout
from dropkit.rng import derive_seed
from dropkit.uncertainty import (
    expected_calibration_error,
    mc_predict,
    negative_log_likelihood,
    regression_summary,
)

__all__ = ["MODELS", "Prepared", "RunResult", "TrainConfig", "build_model", "prepare", "train_run"]

# The model names TrainConfig.model accepts.
MODELS = ("guide-mlp", "mlp", "cnn")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Args:
        p: dropout rate after each hidden layer, in [0, 1).
        input_p: dropout rate on the input features (0: no input dropout).
        hidden: hidden width (of each hidden layer; of the CNN's fully connected layer).
        epochs: passes over the training set.
        batch_size: minibatch size.
        lr: Adam learning rate.
        mc_samples: MC-dropout passes ``T`` at evaluation.
        seed: selects initialization, batch order and dropout streams.
        model: one of :data:`MODELS`: ``"guide-mlp"``, ``"mlp"`` or ``"cnn"``.

    Example:
        >>> TrainConfig(p=0.5).hidden
        128
        >>> TrainConfig(model="rnn")
        Traceback (most recent call last):
        ...
        ValueError: model must be one of 'guide-mlp', 'mlp', 'cnn', got 'rnn'
    """

    p: float = 0.0
    input_p: float = 0.0
    hidden: int = 128
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    mc_samples: int = 30
    seed: int = 0
    model: str = "guide-mlp"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {self.model!r}")
        for name in ("p", "input_p"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("hidden", "epochs", "batch_size", "mc_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")


@dataclass
class Prepared:
    """Standardized float32 tensors of a train/held-out split, and the scalers that made them.

    For regression the target is standardized too (``y_scaler``), and metrics are reported back
    in the target's own units.

    Shape:
        ``x_train``: ``(N_train, F)``; ``y_train``: ``(N_train,)``; likewise for ``*_test``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    num_outputs: int
    scaler: Standardizer
    y_scaler: Standardizer | None = None


def prepare(
    data: Dataset, train_idx: np.ndarray, test_idx: np.ndarray, *, one_scale: bool = False
) -> Prepared:
    """Standardize with statistics of the training rows only and convert to tensors.

    By default each feature gets its own mean and standard deviation. With ``one_scale=True``
    all features share one mean and one standard deviation, taken over every training value:
    right for pixels, which share their units. Per-pixel scaling would blow up a corner pixel
    that is nearly always 0 in the training rows (standard deviation near 0) into values of
    hundreds on a test digit that inks it.

    Example:
        >>> d = Dataset(np.array([[0.0], [2.0], [9.0]]), np.array([0, 1, 0]), "classification", ["a"], "y",
        ...             ["0", "1"])
        >>> prepare(d, np.array([0, 1]), np.array([2])).x_test.tolist()
        [[8.0]]
        >>> pixels = Dataset(np.array([[0.0, 4.0], [4.0, 0.0], [2.0, 2.0]]), np.array([0, 1, 0]),
        ...                  "classification", ["a", "b"], "y", ["0", "1"])
        >>> prepare(pixels, np.array([0, 1]), np.array([2]), one_scale=True).x_test.tolist()
        [[0.0, 0.0]]
    """
    scaler = Standardizer.fit(data.x[train_idx])
    if one_scale:
        values = data.x[train_idx]
        std = float(values.std()) or 1.0
        scaler = Standardizer(np.full_like(scaler.mean, values.mean()), np.full_like(scaler.std, std))

    def features(idx: np.ndarray) -> torch.Tensor:
        z = scaler.transform(data.x[idx])
        far = np.flatnonzero((np.abs(z) > np.finfo(np.float32).max).any(axis=0))
        if len(far):  # float32 would turn these into inf, and the model's outputs into NaN
            names = ", ".join(data.feature_names[j] for j in far[:5])
            raise DataError(f"feature column(s) {names} hold values too far from the training rows for "
                            "float32 after standardization")
        return torch.from_numpy(z).float()

    y_scaler = None
    if data.task == "regression":
        y_scaler = Standardizer.fit(data.y[train_idx, None])
        y = torch.from_numpy(y_scaler.transform(data.y[:, None])[:, 0]).float()
    else:
        y = torch.from_numpy(data.y)
    return Prepared(features(train_idx), y[train_idx], features(test_idx), y[test_idx], data.task,
                    data.num_outputs, scaler, y_scaler)


def _image_side(in_features: int) -> int:
    side = math.isqrt(in_features)
    if side * side != in_features or side % 2:
        raise ValueError(f"the cnn model needs square images of even side, given as flat rows; "
                         f"in_features={in_features} is not the square of an even number")
    return side


def _seed_dropouts(model: torch.nn.Module, seed: int) -> None:
    """Give every dropout layer its own stream, named after where it sits in the model."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Dropout):
                path = f"{name}.{child_name}" if name else child_name
                setattr(module, child_name, Dropout(child.p, seed=derive_seed(seed, "dropout", path)))


def build_model(in_features: int, num_outputs: int, config: TrainConfig) -> torch.nn.Module:
    """The model ``config.model`` names, with dropkit dropout layers that own their streams.

    * ``"guide-mlp"``: the guide's MLP ``Linear(F, hidden) -> ReLU -> Dropout(p) ->
      Linear(hidden, outputs)``;
    * ``"mlp"``: :class:`~dropkit.app.models.WideMLPWithDropout`, two hidden layers of ``hidden``
      units, each followed by ``Dropout(p)``;
    * ``"cnn"``: the guide's CNN (conv 3x3 with 16 channels, ReLU, max-pool 2, ``Linear(.,
      hidden)``, ReLU, ``Dropout(p)``, ``Linear(hidden, outputs)``) on rows of ``F = side**2``
      pixels, reshaped to ``(N, 1, side, side)``.

    Each adds ``Dropout(input_p)`` on the input when ``input_p > 0``. The weights depend on the
    seed only, not on p, so runs of one seed start from the same weights.

    Shape:
        The model maps ``(N, in_features)`` to ``(N, num_outputs)``.

    Example:
        >>> a = build_model(4, 3, TrainConfig(p=0.0, seed=1))
        >>> b = build_model(4, 3, TrainConfig(p=0.5, seed=1))
        >>> torch.equal(a.fc1.weight, b.fc1.weight)
        True
        >>> build_model(64, 10, TrainConfig(model="cnn"))(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model: torch.nn.Module
        if config.model == "guide-mlp":
            model = SimpleModelWithDropout(
                config.p, in_features=in_features, hidden=config.hidden, num_classes=num_outputs,
                input_dropout=config.input_p,
            )
        elif config.model == "mlp":
            model = WideMLPWithDropout(config.p, in_features=in_features, hidden=config.hidden,
                                       num_classes=num_outputs, input_dropout=config.input_p)
        else:
            side = _image_side(in_features)
            cnn = SimpleCNNWithDropout(config.p, in_channels=1, image_size=side, hidden=config.hidden,
                                       num_classes=num_outputs, input_dropout=config.input_p)
            model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, side, side)), cnn)
    if config.model != "guide-mlp":
        _seed_dropouts(model, config.seed)
        return model
    # Constructing a layer draws nothing, so swapping in seeded layers leaves the weights alone.
    model.dropout = Dropout(config.p, seed=derive_seed(config.seed, "dropout", "hidden"))
    if config.input_p > 0:
        model.input_dropout = Dropout(config.input_p, seed=derive_seed(config.seed, "dropout", "input"))
    return model


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        config: the run's hyper-parameters.
        metrics: final metrics (see :func:`train_run`).
        train_loss, test_loss: loss per epoch, evaluated with dropout off.
        test_probs: class probabilities on the held-out rows with dropout off, ``(N_test, C)``
            (classification only).
        model: the trained model (eval mode).
    """

    config: TrainConfig
    metrics: dict[str, float]
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_probs: torch.Tensor | None = None
    model: torch.nn.Module | None = None

    def to_json(self) -> dict[str, object]:
        """The run as plain JSON types (no tensors, no model)."""
        return {"config": asdict(self.config), "metrics": self.metrics,
                "train_loss": self.train_loss, "test_loss": self.test_loss}


def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out[:, 0], y)


def _classification_metrics(model: torch.nn.Module, data: Prepared, config: TrainConfig
                            ) -> tuple[dict[str, float], torch.Tensor]:
    with torch.no_grad():
        train_acc = (model(data.x_train).argmax(1) == data.y_train).double().mean().item()
        probs = torch.softmax(model(data.x_test), dim=1)
    mc = torch.softmax(mc_predict(model, data.x_test, config.mc_samples, seed=derive_seed(config.seed, "mc")),
                       dim=-1).mean(0)
    test_acc = (probs.argmax(1) == data.y_test).double().mean().item()
    metrics = {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "gap": train_acc - test_acc,
        "test_nll": float(negative_log_likelihood(probs, data.y_test)),
        "ece": float(expected_calibration_error(probs, data.y_test)),
        "mc_acc": (mc.argmax(1) == data.y_test).double().mean().item(),
        "mc_nll": float(negative_log_likelihood(mc, data.y_test)),
    }
    return metrics, probs


def _gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> float:
    return (0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)).mean().item()


def _regression_metrics(model: torch.nn.Module, data: Prepared, config: TrainConfig) -> dict[str, float]:
    scale = float(data.y_scaler.std[0]) if data.y_scaler is not None else 1.0
    with torch.no_grad():
        train_err = model(data.x_train)[:, 0] - data.y_train
        test_pred = model(data.x_test)[:, 0]
    # Residual variance on the training rows is the noise level of the deterministic model.
    noise = train_err.pow(2).mean().clamp_min(1e-6)
    outputs = mc_predict(model, data.x_test, config.mc_samples, seed=derive_seed(config.seed, "mc"))
    summary = regression_summary(outputs[..., 0], tau=1.0 / noise.item())
    mc_mean, mc_var = summary.mean, summary.total_variance
    log_scale = math.log(scale)  # NLL in target units: density scales by 1 / std
    train_rmse = train_err.pow(2).mean().sqrt().item() * scale
    test_rmse = (test_pred - data.y_test).pow(2).mean().sqrt().item() * scale
    return {
        "train_rmse": train_rmse,
        "test_rmse": test_rmse,
        "gap": test_rmse - train_rmse,
        "test_nll": _gaussian_nll(test_pred, noise.expand_as(test_pred), data.y_test) + log_scale,
        "mc_rmse": (mc_mean - data.y_test).pow(2).mean().sqrt().item() * scale,
        "mc_nll": _gaussian_nll(mc_mean, mc_var, data.y_test) + log_scale,
    }


def train_run(data: Prepared, config: TrainConfig, on_epoch: Callable[[], None] | None = None) -> RunResult:
    """Train the model with Adam and evaluate it on the held-out rows.

    After every epoch the loss on both parts is measured with dropout off. Final metrics:

    * classification: ``train_acc``, ``test_acc``, ``gap = train_acc - test_acc``, ``test_nll``
      (mean ``-log p(y | x)``), ``ece`` (15 bins), and ``mc_acc`` / ``mc_nll`` of the MC-dropout
      predictive ``(1/T) sum_t softmax(f_t(x))`` (Gal & Ghahramani, ICML 2016);
    * regression (in target units): ``train_rmse``, ``test_rmse``, ``gap = test_rmse -
      train_rmse``, ``test_nll`` (Gaussian with the training residual variance), ``mc_rmse`` and
      ``mc_nll`` (Gaussian with MC variance plus that residual variance).

    A positive gap always means the model does better on its training rows.

    Shape:
        ``data.x_train``: ``(N, F)``; ``test_probs``: ``(N_test, C)``.

    Example:
        >>> d = Dataset(np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2, "classification",
        ...             ["a", "b", "c"], "y", ["0", "1"])
        >>> split = prepare(d, np.arange(30), np.arange(30, 40))
        >>> r = train_run(split, TrainConfig(p=0.2, epochs=2, hidden=8))
        >>> len(r.test_loss), sorted(r.metrics)[:2]
        (2, ['ece', 'gap'])
    """
    model = build_model(data.x_train.shape[1], data.num_outputs, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(data.x_train)
    result = RunResult(config, {})
    for epoch in range(config.epochs):
        model.train()
        order = torch.from_numpy(permutation(n, config.seed, "shuffle", epoch))
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = _loss(data.task, model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            result.train_loss.append(_loss(data.task, model(data.x_train), data.y_train).item())
            result.test_loss.append(_loss(data.task, model(data.x_test), data.y_test).item())
        if on_epoch is not None:
            on_epoch()
    if data.task == "classification":
        result.metrics, result.test_probs = _classification_metrics(model, data, config)
    else:
        result.metrics = _regression_metrics(model, data, config)
    result.model = model
    return result
