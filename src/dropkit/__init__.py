"""dropkit: the dropout family for PyTorch, on one reproducible random stream."""

from dropkit import functional, patch, rng, schedules
from dropkit.functional import dropout, dropout_mask
from dropkit.layers import Dropout
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
