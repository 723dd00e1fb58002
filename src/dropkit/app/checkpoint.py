"""Save and load a model trained by ``dropkit train``: plain tensors, lists and numbers only.

The file is a dict that ``torch.load(path, weights_only=True)`` reads without unpickling any
object: ``format`` ("dropkit-model"), ``version``, the model's ``state_dict`` (weights and the
dropout layers' stream buffers), the feature ``scaler`` (mean and std tensors), for regression
the target scaler and the training residual variance, and a ``config`` of ints, floats, strings
and lists from which the model is rebuilt.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dropkit.app.data import Dataset, Standardizer
from dropkit.app.errors import DataError
from dropkit.app.models import SimpleModelWithDropout
from dropkit.app.training import Prepared, RunResult, TrainConfig, build_model

__all__ = ["FORMAT", "LoadedModel", "load_model", "save_model"]

FORMAT = "dropkit-model"
VERSION = 1


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what is needed to use it.

    Attributes:
        model: the MLP.
        task: "classification" or "regression".
        feature_names: the input columns the model expects, in order.
        classes: the label of each output (classification).
        scaler: the feature standardization fitted on the training rows.
        y_scaler: the target standardization (regression).
        noise_variance: the training residual variance in target units (regression).
        config: the stored settings.
    """

    model: SimpleModelWithDropout
    task: str
    feature_names: list[str]
    classes: list[str]
    scaler: Standardizer
    y_scaler: Standardizer | None
    noise_variance: float
    config: dict[str, object]


def save_model(path: str | Path, run: RunResult, data: Dataset, prepared: Prepared) -> Path:
    """Write ``run``'s model with its scalers and settings to ``path``.

    Example:
        >>> import tempfile, numpy as np
        >>> from dropkit.app.training import prepare, train_run
        >>> d = Dataset(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2, "classification",
        ...             ["a", "b"], "y", ["no", "yes"])
        >>> prep = prepare(d, np.arange(15), np.arange(15, 20))
        >>> run = train_run(prep, TrainConfig(epochs=1, hidden=4))
        >>> f = save_model(Path(tempfile.mkdtemp()) / "m.pt", run, d, prep)
        >>> load_model(f).classes
        ['no', 'yes']
    """
    assert run.model is not None, "the run kept no model"
    noise = 0.0
    if prepared.task == "regression":
        with torch.no_grad():
            err = run.model.eval()(prepared.x_train)[:, 0] - prepared.y_train
        noise = err.pow(2).mean().item() * float(prepared.y_scaler.std[0]) ** 2  # type: ignore[union-attr]
    cfg = run.config
    state = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": run.model.state_dict(),
        "scaler": prepared.scaler.to_tensors(),
        "y_scaler": prepared.y_scaler.to_tensors() if prepared.y_scaler is not None else None,
        "noise_variance": noise,
        "config": {
            "task": data.task, "in_features": prepared.x_train.shape[1], "num_outputs": data.num_outputs,
            "hidden": cfg.hidden, "p": cfg.p, "input_p": cfg.input_p, "seed": cfg.seed,
            "feature_names": list(data.feature_names), "classes": list(data.classes), "target": data.target,
        },
    }
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.partial-{os.getpid()}"
    try:  # a complete file or none: written under a temporary name, renamed when complete
        torch.save(state, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _not_ours(path: Path, why: str) -> DataError:
    return DataError(f"{path}: not a dropkit model file ({why}); make one with `dropkit train --save FILE`")


def load_model(path: str | Path) -> LoadedModel:
    """Load a checkpoint written by :func:`save_model` with ``torch.load(weights_only=True)``.

    Raises:
        DataError: if the file is missing, unreadable, or not a dropkit model.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "x.pt"
        >>> torch.save({"weights": torch.zeros(2)}, f)
        >>> load_model(f)
        Traceback (most recent call last):
        ...
        dropkit.app.errors.DataError: ...x.pt: not a dropkit model file (no 'format': 'dropkit-model' ...
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # the unpickler fails in many ways on bytes that are not a checkpoint
        # torch's own message advises weights_only=False, which would run any code in the file.
        why = "it holds Python objects, which dropkit never unpickles" if "weights_only" in str(e) else (
            f"unreadable: {type(e).__name__}")
        raise _not_ours(path, why) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _not_ours(path, f"no 'format': '{FORMAT}' entry")
    if state.get("version") != VERSION:
        raise _not_ours(path, f"format version {state.get('version')!r}, this dropkit reads {VERSION}")
    try:
        cfg = state["config"]
        _check_config(cfg)
        weights = state["state_dict"]
        shapes = {"fc1.weight": (cfg["hidden"], cfg["in_features"]),
                  "fc2.weight": (cfg["num_outputs"], cfg["hidden"])}
        for key, shape in shapes.items():  # checked before the model is built: no size is trusted blindly
            if not isinstance(weights[key], torch.Tensor) or tuple(weights[key].shape) != shape:
                raise ValueError(f"{key} does not have the shape {shape} that the config gives")
        train_cfg = TrainConfig(p=cfg["p"], input_p=cfg["input_p"], hidden=cfg["hidden"], seed=cfg["seed"])
        model = build_model(cfg["in_features"], cfg["num_outputs"], train_cfg)
        model.load_state_dict(state["state_dict"])
        scaler = Standardizer.from_tensors(state["scaler"])
        y_scaler = Standardizer.from_tensors(state["y_scaler"]) if state["y_scaler"] is not None else None
        noise = float(state["noise_variance"])
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise variance {noise!r}")
        if scaler.mean.shape != (cfg["in_features"],) or scaler.std.shape != (cfg["in_features"],):
            raise ValueError("the feature scaler does not match the input size")
        if (cfg["task"] == "regression") != (y_scaler is not None):
            raise ValueError(f"a {cfg['task']} model {'needs' if y_scaler is None else 'has no use for'} "
                             "a target scaler")
        for s in [scaler] + ([y_scaler] if y_scaler is not None else []):
            if s.mean.ndim != 1 or s.std.shape != s.mean.shape or not (
                    np.isfinite(s.mean).all() and np.isfinite(s.std).all() and (s.std > 0).all()):
                raise ValueError("a scaler holds NaN, inf or a non-positive std")
        if y_scaler is not None and y_scaler.mean.shape != (1,):
            raise ValueError("the target scaler must have one entry")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise _not_ours(path, f"damaged content: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        ) from None
    return LoadedModel(model.eval(), cfg["task"], list(cfg["feature_names"]), list(cfg["classes"]), scaler,
                       y_scaler, noise, cfg)


def _check_config(cfg: object) -> None:
    """Check every entry of a stored config against the others, so an edited file fails here, at
    load time, with its reason, and never later inside ``predict``."""
    if not isinstance(cfg, dict):
        raise TypeError(f"the config is a {type(cfg).__name__}, not a dict")

    def count(key: str) -> int:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config {key!r} must be a positive int, got {value!r}")
        return value

    def names(key: str) -> list[str]:
        value = cfg[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config {key!r} must be a list of strings")
        return value

    if cfg["task"] not in ("classification", "regression"):
        raise ValueError(f"config 'task' must be 'classification' or 'regression', got {cfg['task']!r}")
    in_features, outputs = count("in_features"), count("num_outputs")
    count("hidden")
    if len(names("feature_names")) != in_features:
        raise ValueError(f"{len(cfg['feature_names'])} feature names for {in_features} inputs")
    classes = names("classes")
    if cfg["task"] == "classification" and (len(classes) != outputs or outputs < 2):
        raise ValueError(f"{len(classes)} class names for {outputs} outputs")
    if cfg["task"] == "regression" and outputs != 1:
        raise ValueError(f"a regression model has 1 output, the config says {outputs}")
    for key in ("p", "input_p"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ValueError(f"config {key!r} must be in [0, 1), got {value!r}")
    seed = cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"config 'seed' must be an int in [0, 2**63), got {seed!r}")
