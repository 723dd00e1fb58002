"""DropConnect and WeightDrop: modules that drop the weights of a wrapped layer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dropkit.functional._checks import check_p
from dropkit.functional.weight import apply_drop_connect, check_param_names
from dropkit.layers._base import StreamModule

__all__ = ["DropConnect", "WeightDrop"]

_DROP_CONNECT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class DropConnect(StreamModule):
    r"""Wrap nn.Linear or nn.Conv1d/2d/3d and drop its weights element-wise in training.

    Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013. Training:
    ``y = layer(x; W * M / (1 - p))`` with a fresh mask ``M`` per call (inverted scaling);
    evaluation: ``y = layer(x; W)``. The wrapped layer's parameters are never modified, so
    ``state_dict`` keys are ``module.weight`` and ``module.bias``. See
    :func:`dropkit.functional.drop_connect`.

    Args:
        module: the nn.Linear / nn.Conv1d / nn.Conv2d / nn.Conv3d to wrap.
        p: probability of dropping a weight, in [0, 1]. Default: 0.5.
        names: parameters to drop. Default: ``("weight",)``.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        That of the wrapped layer, e.g. (N, H_in) -> (N, H_out) or (N, C_in, H, W) -> (N, C_out, H', W').

    Example:
        >>> m = DropConnect(nn.Linear(4, 3), 0.5, seed=0)
        >>> m(torch.ones(2, 4)).shape
        torch.Size([2, 3])
    """

    _checked_attributes = {"p": check_p}

    def __init__(
        self, module: nn.Module, p: float = 0.5, names: Sequence[str] = ("weight",), *,
        seed: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        if not isinstance(module, _DROP_CONNECT_TYPES):
            raise TypeError(
                f"DropConnect wraps nn.Linear or nn.Conv1d/2d/3d, got {type(module).__name__}; "
                "use WeightDrop for nn.LSTM / nn.GRU"
            )
        self.module = module
        self.p = p
        self.names = check_param_names(module, names)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        return apply_drop_connect(self.module, args, kwargs, self.p, self.names, self.stream())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(args, kwargs)

    def extra_repr(self) -> str:
        return f"p={self.p}, names={self.names}" + self._stream_repr()


def _recurrent_weight_names(module: nn.RNNBase) -> tuple[str, ...]:
    return tuple(n for n in module._flat_weights_names if n.startswith("weight_hh"))


class WeightDrop(DropConnect):
    r"""Drop the hidden-to-hidden weights of nn.LSTM / nn.GRU / nn.RNN once per forward call.

    The weight-dropped LSTM of Merity, Keskar and Socher, "Regularizing and Optimizing LSTM
    Language Models" (ICLR 2018): ``W_hh' = W_hh * M / (1 - p)``, one mask for all time steps
    of the call. Unlike the original implementation it works on current PyTorch: the raw
    weights stay registered under their own names (no "weight_hh_l0 missing" failure), the
    dropped weights are passed by ``torch.func.functional_call`` for the call only, so
    evaluation uses the raw weights and nothing is dropped, and cuDNN's warning that the
    weights are not one contiguous chunk (expected here: the dropped weights are fresh
    tensors) is not repeated on every call.

    Args:
        module: the nn.LSTM / nn.GRU / nn.RNN to wrap.
        p: probability of dropping a weight, in [0, 1]. Default: 0.5.
        names: parameters to drop. Default: every ``weight_hh_l*`` of the module.
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        That of the wrapped module: input (L, N, H_in) (or batch first), output
        ``(output, h_n)`` or ``(output, (h_n, c_n))``.

    Example:
        >>> m = WeightDrop(nn.LSTM(4, 5), 0.5, seed=0)
        >>> out, (h, c) = m(torch.randn(3, 2, 4))
        >>> out.shape
        torch.Size([3, 2, 5])
    """

    def __init__(
        self, module: nn.Module, p: float = 0.5, names: Sequence[str] | None = None, *,
        seed: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(module, nn.RNNBase):
            raise TypeError(f"WeightDrop wraps nn.LSTM, nn.GRU or nn.RNN, got {type(module).__name__}")
        StreamModule.__init__(self, seed=seed, generator=generator)
        self.module = module
        self.p = p
        self.names = check_param_names(module, _recurrent_weight_names(module) if names is None else names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.training and self.p > 0):
            return self._call(args, kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk of memory.*")
            return self._call(args, kwargs)
