"""DropConnect: dropout on a layer's weights (Wan, Zeiler, Zhang, LeCun and Fergus,
"Regularization of Neural Networks using DropConnect", ICML 2013).

Each named parameter ``W`` of the module is replaced, for one call, by ``W * M / (1 - p)``
with a fresh keep-mask ``M`` (inverted scaling, so evaluation uses ``W`` itself; the paper's
Gaussian moment-matching inference is not reproduced). The module is run with
``torch.func.functional_call``: the stored parameters are never modified or renamed, so the
``state_dict`` keeps its keys and evaluation sees the raw weights.

For recurrent modules this is the weight-dropped LSTM of Merity, Keskar and Socher,
"Regularizing and Optimizing LSTM Language Models" (ICLR 2018): the hidden-to-hidden matrices
are dropped once per forward call, so every time step shares one mask.

Stream layout: parameter ``k`` of ``names`` (in the given order) uses the blocks starting at
``offset + sum_{j<k} ceil(numel_j / 4)``, element ``i`` of its flattened weight using word
``i`` there; a call uses ``sum_k ceil(numel_k / 4)`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dropkit import _dtensor
from dropkit.functional._checks import check_p, open_stream
from dropkit.functional.dropout import apply_dropout, inverted_scale
from dropkit.rng import keep_threshold

__all__ = ["drop_connect", "apply_drop_connect", "check_param_names"]


def check_param_names(module: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """Check that every name in ``names`` is a floating-point parameter of ``module``.

    Example:
        >>> from torch import nn
        >>> check_param_names(nn.Linear(2, 2), ["weight"])
        ('weight',)
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"names must be a non-empty sequence of parameter names, got {names!r}")
    params = dict(module.named_parameters())
    for name in names:
        if name not in params:
            raise ValueError(f"{type(module).__name__} has no parameter {name!r}; it has {sorted(params)}")
        if not params[name].is_floating_point():
            raise TypeError(f"parameter {name!r} must be floating point, got {params[name].dtype}")
    if len(set(names)) != len(names):
        raise ValueError(f"names has repeated entries: {tuple(names)!r}")
    return tuple(names)


def drop_connect(
    module: nn.Module, args: tuple[Any, ...], p: float = 0.5, training: bool = True, *,
    names: Sequence[str] = ("weight",), kwargs: dict[str, Any] | None = None,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> Any:
    r"""Call ``module(*args, **kwargs)`` with its parameters ``names`` dropped element-wise.

    ``W' = W * M / (1 - p)``, ``M_ij ~ Bernoulli(1 - p)``, drawn once per call; ``p = 1``
    zeroes the weights (zero gradient, never NaN). Outside training, or with ``p = 0``, the
    module is called as it is.

    Args:
        module: any module, typically nn.Linear, nn.Conv1d/2d/3d, nn.LSTM or nn.GRU.
        args: positional inputs of the module.
        p: probability of dropping a weight, in [0, 1].
        training: plain call when False.
        names: parameters to drop (default: ``("weight",)``).
        kwargs: keyword inputs of the module.
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Whatever ``module`` takes and returns; for nn.Linear, input ``(N, *, H_in)`` and output
        ``(N, *, H_out)``.

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> y = drop_connect(lin, (torch.ones(2, 4),), 0.5, seed=0)
        >>> y.shape
        torch.Size([2, 3])
    """
    p = check_p(p)
    names = check_param_names(module, names)
    kwargs = kwargs or {}
    stream = open_stream(seed, offset, generator, next(module.parameters()).device)
    if not training:
        return module(*args, **kwargs)
    return apply_drop_connect(module, args, kwargs, p, names, stream)


def apply_drop_connect(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], p: float, names: tuple[str, ...],
    stream: object,
) -> Any:
    """The unchecked core of :func:`drop_connect` in training: each parameter in ``names``, in
    order, takes its own words from ``stream`` (one per element)."""
    if p == 0.0:
        return module(*args, **kwargs)
    params = dict(module.named_parameters())
    threshold, scale = keep_threshold(p), inverted_scale(p)
    with _dtensor.outside_global_batch():  # weights: every rank draws their whole masks
        dropped = {
            name: apply_dropout(params[name], threshold, scale, (), stream, "bits", False) for name in names
        }
    return torch.func.functional_call(module, dropped, args, kwargs)
