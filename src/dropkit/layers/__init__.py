"""dropkit.layers: nn.Module wrappers of dropkit.functional (validation, buffers, extra_repr)."""

from dropkit.layers._base import StreamModule
from dropkit.layers.dropout import Dropout

__all__ = ["StreamModule", "Dropout"]
