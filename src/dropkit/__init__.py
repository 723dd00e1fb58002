"""dropkit: the dropout family for PyTorch, on one reproducible random stream.

The names below load on first use (PEP 562): ``import dropkit`` by itself imports neither torch
nor any submodule, so a program decides what runs before torch loads (the ``dropkit`` command,
in :mod:`dropkit.app`, installs its start-up Ctrl-C handler first). ``dropkit.Dropout`` and
``from dropkit import Dropout`` import :mod:`dropkit.layers` the first time and are plain module
attributes afterwards. The library never imports :mod:`dropkit.app`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dropkit import distributed, functional, patch, rng, schedules, uncertainty
    from dropkit.functional import (
        drop_path_rates,
        dropout,
        dropout_add_norm,
        dropout_mask,
        rdrop_loss,
    )
    from dropkit.layers import (
        AlphaDropout,
        ConcreteDropout,
        DropBlock2d,
        DropBlock3d,
        DropConnect,
        Dropout,
        Dropout1d,
        Dropout2d,
        Dropout3d,
        DropPath,
        EmbeddingDropout,
        FeatureAlphaDropout,
        GaussianDropout,
        GaussianNoise,
        LayerDrop,
        LockedDropout,
        MultiheadAttention,
        StochasticDepth,
        StreamModule,
        WeightDrop,
        concrete_regularization,
    )
    from dropkit.rng import STREAM_VERSION, philox4x32

__version__ = "0.1.0"

__all__ = [
    "AlphaDropout",
    "concrete_regularization",
    "ConcreteDropout",
    "distributed",
    "drop_path_rates",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnect",
    "Dropout",
    "dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "dropout_add_norm",
    "dropout_mask",
    "DropPath",
    "EmbeddingDropout",
    "FeatureAlphaDropout",
    "functional",
    "GaussianDropout",
    "GaussianNoise",
    "LayerDrop",
    "LockedDropout",
    "MultiheadAttention",
    "patch",
    "philox4x32",
    "rdrop_loss",
    "rng",
    "schedules",
    "StochasticDepth",
    "STREAM_VERSION",
    "StreamModule",
    "uncertainty",
    "WeightDrop",
]

# The subpackages and modules reachable as attributes (the command, dropkit.app, is not one).
_SUBMODULES = frozenset({
    "backends",
    "distributed",
    "functional",
    "layers",
    "ops",
    "patch",
    "rng",
    "schedules",
    "uncertainty",
})
# Where each top-level name that is not a submodule lives: one line per name.
_HOMES = {
    "drop_path_rates": "dropkit.functional",
    "dropout": "dropkit.functional",
    "dropout_add_norm": "dropkit.functional",
    "dropout_mask": "dropkit.functional",
    "rdrop_loss": "dropkit.functional",
    "AlphaDropout": "dropkit.layers",
    "concrete_regularization": "dropkit.layers",
    "ConcreteDropout": "dropkit.layers",
    "DropBlock2d": "dropkit.layers",
    "DropBlock3d": "dropkit.layers",
    "DropConnect": "dropkit.layers",
    "Dropout": "dropkit.layers",
    "Dropout1d": "dropkit.layers",
    "Dropout2d": "dropkit.layers",
    "Dropout3d": "dropkit.layers",
    "DropPath": "dropkit.layers",
    "EmbeddingDropout": "dropkit.layers",
    "FeatureAlphaDropout": "dropkit.layers",
    "GaussianDropout": "dropkit.layers",
    "GaussianNoise": "dropkit.layers",
    "LayerDrop": "dropkit.layers",
    "LockedDropout": "dropkit.layers",
    "MultiheadAttention": "dropkit.layers",
    "StochasticDepth": "dropkit.layers",
    "StreamModule": "dropkit.layers",
    "WeightDrop": "dropkit.layers",
    "philox4x32": "dropkit.rng",
    "STREAM_VERSION": "dropkit.rng",
}


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return importlib.import_module(f"dropkit.{name}")  # the import binds it in this namespace
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dropkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
