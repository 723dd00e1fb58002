"""Kernels behind dropkit's ops. Each backend module implements the same four functions.

``keep_mask(numel, seed, offset, threshold, device) -> bool tensor (numel,)``
``pack_mask(mask) -> uint8 tensor``: the keep-mask as the "bits" storage format.
``dropout_forward(x, seed, offset, threshold, scale, storage) -> (y, saved)``
``dropout_backward(grad, saved, seed, offset, threshold, scale, storage) -> grad_in``

``x`` and ``grad`` are contiguous; element ``i`` of their flattened view uses stream word
``i``. ``y = x * scale`` where the word is ``>= threshold`` and exactly ``0`` elsewhere, with
the product computed in float32 (float64 for float64 tensors) and rounded once to the
tensor's dtype. ``saved`` is the bit-packed keep-mask for ``storage="bits"`` (element ``i`` is
bit ``i % 8`` of byte ``i // 8``), a bool keep-mask for ``"bool"`` and an empty uint8 tensor
for ``"seed"`` (the backward pass then regenerates the mask from ``seed`` and ``offset``).
"""
