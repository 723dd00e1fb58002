"""dropkit: the dropout family for PyTorch, on one reproducible random stream."""

from dropkit import functional, patch, rng, schedules, uncertainty
from dropkit.functional import drop_path_rates, dropout, dropout_mask, rdrop_loss
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
    StochasticDepth,
    WeightDrop,
    concrete_regularization,
)
from dropkit.rng import STREAM_VERSION, philox4x32

__version__ = "0.1.0"

__all__ = [
    "STREAM_VERSION",
    "Dropout",
    "dropout",
    "dropout_mask",
    "functional",
    "patch",
    "philox4x32",
    "rng",
    "schedules",
]

# The dropout family (issue 4).
__all__ += [
    "AlphaDropout",
    "ConcreteDropout",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnect",
    "DropPath",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "EmbeddingDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "LockedDropout",
    "StochasticDepth",
    "WeightDrop",
    "concrete_regularization",
    "drop_path_rates",
    "rdrop_loss",
]

# MC dropout and uncertainty (issue 5).
__all__ += ["uncertainty"]
