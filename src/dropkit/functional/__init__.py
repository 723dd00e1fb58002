"""dropkit.functional: every dropout-family operation as a pure function."""

from dropkit.functional.alpha import alpha_dropout, feature_alpha_dropout
from dropkit.functional.attention import scaled_dot_product_attention
from dropkit.functional.concrete import concrete_dropout, concrete_regularizer
from dropkit.functional.dropblock import drop_block2d, drop_block3d, dropblock_gamma
from dropkit.functional.dropout import dropout, dropout_mask, mask_shape
from dropkit.functional.droppath import drop_path, drop_path_rates
from dropkit.functional.fused import dropout_add_norm
from dropkit.functional.noise import gaussian_dropout, gaussian_noise
from dropkit.functional.rdrop import rdrop_loss
from dropkit.functional.sequence import embedding_dropout, locked_dropout
from dropkit.functional.spatial import dropout1d, dropout2d, dropout3d
from dropkit.functional.weight import drop_connect

__all__ = [
    "alpha_dropout",
    "concrete_dropout",
    "concrete_regularizer",
    "drop_block2d",
    "drop_block3d",
    "drop_connect",
    "drop_path",
    "drop_path_rates",
    "dropblock_gamma",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "dropout_add_norm",
    "dropout_mask",
    "embedding_dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "locked_dropout",
    "mask_shape",
    "rdrop_loss",
    "scaled_dot_product_attention",
]
