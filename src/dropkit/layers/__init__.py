"""dropkit.layers: nn.Module wrappers of dropkit.functional (validation, buffers, extra_repr)."""

from dropkit.layers._base import RateModule, StreamModule
from dropkit.layers.alpha import AlphaDropout, FeatureAlphaDropout
from dropkit.layers.attention import MultiheadAttention
from dropkit.layers.concrete import ConcreteDropout, concrete_regularization
from dropkit.layers.dropblock import DropBlock2d, DropBlock3d
from dropkit.layers.dropout import Dropout
from dropkit.layers.droppath import DropPath, StochasticDepth
from dropkit.layers.layerdrop import LayerDrop
from dropkit.layers.noise import GaussianDropout, GaussianNoise
from dropkit.layers.sequence import EmbeddingDropout, LockedDropout
from dropkit.layers.spatial import Dropout1d, Dropout2d, Dropout3d
from dropkit.layers.weight import DropConnect, WeightDrop

__all__ = [
    "AlphaDropout",
    "concrete_regularization",
    "ConcreteDropout",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnect",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "DropPath",
    "EmbeddingDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "LayerDrop",
    "LockedDropout",
    "MultiheadAttention",
    "RateModule",
    "StochasticDepth",
    "StreamModule",
    "WeightDrop",
]
