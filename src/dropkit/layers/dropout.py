"""The Dropout module: a drop-in for torch.nn.Dropout on dropkit's stream."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dropkit.functional._checks import (
    check_dims,
    check_dims_syntax,
    check_mask_storage,
    check_mode,
)
from dropkit.functional.dropout import apply_dropout, evaluation, inverted_scale
from dropkit.layers._base import RateModule
from dropkit.layers._torch_classes import unusual_input
from dropkit.rng import keep_threshold

__all__ = ["Dropout"]


class Dropout(RateModule, nn.Dropout):
    r"""During training, zero each element with probability ``p``; a drop-in for torch.nn.Dropout.

    An instance of ``torch.nn.Dropout`` (and ``nn.modules.dropout._DropoutNd``) with torch's
    ``p`` and ``inplace``, so code that finds dropout by torch's classes finds it; torch.fx
    traces it as a leaf and a quantized model's tensors pass through it in eval (see
    :mod:`dropkit.layers._torch_classes`).

    ``mode="inverted"``: training ``y = x * m / (1 - p)``, evaluation ``y = x``.
    ``mode="classic"``: training ``y = x * m``, evaluation ``y = (1 - p) x``
    (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
    JMLR 2014). See :func:`dropkit.functional.dropout`.

    Args:
        p: probability of an element being zeroed. Default: 0.5.
        inplace: do the operation in place. Default: False.
        mode: "inverted" (default) or "classic".
        shared_dims: dimensions that share one mask value (Flax's broadcast_dims).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.
        mask_storage: "bits" (default), "seed" or "bool": what is saved for backward.

    Shape:
        Input: ``(*)``. Output: ``(*)``, same shape.

    Examples:
        >>> m = Dropout(p=0.4, seed=0)
        >>> y = m(torch.ones(2, 5, dtype=torch.float64))
        >>> sorted(set(y.flatten().tolist())) == [0.0, 1 / 0.6]
        True
        >>> int(m.offset)  # ten words used: the next call starts at block ceil(10 / 4) = 3
        3
        >>> _ = m.eval()
        >>> m(torch.ones(5))
        tensor([1., 1., 1., 1., 1.])
    """

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, mode: str = "inverted",
        shared_dims: Sequence[int] = (), seed: int | None = None, generator: torch.Generator | None = None,
        mask_storage: str = "bits",
    ) -> None:
        self.mode = check_mode(mode)
        super().__init__(p, inplace, seed=seed, generator=generator)
        self.shared_dims = check_dims_syntax(shared_dims)
        self.mask_storage = check_mask_storage(mask_storage)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in ("p", "mode"):
            # Derived once per change of p or mode, never per call.
            p = self.__dict__.get("p", 0.0)
            self.__dict__["_threshold"] = keep_threshold(p)
            self.__dict__["_scale"] = inverted_scale(p) if self.__dict__.get("mode") == "inverted" else 1.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dense = isinstance(input, torch.Tensor) and input.layout == torch.strided
        if not (dense and input.is_floating_point()):
            return unusual_input(self, input, self.mode == "inverted")
        if not self.training:
            return evaluation(input, self.p, self.mode, self.inplace)
        if self.p == 0.0:
            return input
        dims = self.shared_dims
        if dims:
            dims = check_dims(dims, input.dim())
        return apply_dropout(input, self._threshold, self._scale, dims, self.stream(), self.mask_storage,
                             self.inplace)

    def extra_repr(self) -> str:
        s = f"p={self.p}, inplace={self.inplace}"
        if self.mode != "inverted":
            s += f", mode={self.mode!r}"
        if self.shared_dims:
            s += f", shared_dims={self.shared_dims}"
        if self.mask_storage != "bits":
            s += f", mask_storage={self.mask_storage!r}"
        return s + self._stream_repr()
