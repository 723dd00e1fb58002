"""dropkit.functional: every dropout-family operation as a pure function."""

from dropkit.functional.dropout import dropout, dropout_mask, mask_shape

__all__ = ["dropout", "dropout_mask", "mask_shape"]
