"""dropkit: the dropout family for PyTorch, on one reproducible random stream."""

# First: in the command, a Ctrl-C while torch loads prints one line and exits 130 (see _startup).
from dropkit import _startup  # isort: skip
from dropkit import distributed, functional, models, patch, rng, schedules, uncertainty
from dropkit.functional import drop_path_rates, dropout, dropout_add_norm, dropout_mask, rdrop_loss
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
    "LockedDropout",
    "models",
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

_startup.end()
