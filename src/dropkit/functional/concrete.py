"""Concrete dropout (Gal, Hron and Kendall, "Concrete Dropout", NeurIPS 2017).

The drop probability is learned: the Bernoulli mask is replaced by its continuous relaxation
(the Concrete / relaxed Bernoulli distribution), which is differentiable in ``p``:

    z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / t),   u ~ U(0, 1),
    y = x * (1 - z) / (1 - p),

with temperature ``t = 0.1`` (2/3 for the spatial, per-channel form). ``z`` is the relaxed
*drop* indicator. The training loss adds the regularizer (the KL term of the paper's
variational objective, in the form of the authors' code)

    R = weight_regularizer * ||W||^2 / (1 - p)
        + dropout_regularizer * input_dim * (p log p + (1 - p) log(1 - p)),

where ``W`` are the parameters of the layer that follows the dropout, ``input_dim`` its
input dimension, ``weight_regularizer = l^2 / N`` and ``dropout_regularizer = 2 / N`` for
prior length-scale ``l`` and ``N`` training points (``p log p + (1 - p) log(1 - p)`` is minus
the Bernoulli entropy, so the term pulls ``p`` toward 1/2).

Uniform ``i`` of the call (row-major over the mask shape) is ``U(w[i])``; a call uses one
word per mask element, drawn by the pure-torch reference generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dropkit import _dtensor
from dropkit.functional._checks import check_dims, check_floating, open_stream
from dropkit.functional._noise import draw_uniform, opmath
from dropkit.functional.dropout import mask_shape

__all__ = ["concrete_dropout", "concrete_regularizer", "concrete_regularizer_from_logit"]


def concrete_dropout(
    input: torch.Tensor, p_logit: torch.Tensor, temperature: float = 0.1, training: bool = True, *,
    shared_dims: Sequence[int] = (), seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Relaxed-Bernoulli dropout with drop probability ``p = sigmoid(p_logit)``.

    ``y = x * (1 - z) / (1 - p)`` with
    ``z = sigmoid((p_logit + log u - log(1 - u)) / temperature)``; differentiable in
    ``p_logit`` (Gal, Hron and Kendall 2017). ``log p - log(1 - p)`` is taken as ``p_logit``
    itself, which is exact and never overflows. Identity when ``training`` is False.

    Args:
        input: floating-point tensor.
        p_logit: 0-dim tensor, the logit of the drop probability (learnable).
        temperature: relaxation temperature > 0 (0.1; 2/3 for per-channel masks).
        training: identity when False.
        shared_dims: dims sharing one mask value (the spatial dims for the spatial form).
        seed, offset, generator: the stream position, as in :func:`dropkit.functional.dropout`.

    Shape:
        Input: ``(*)``, e.g. (N, C) or (N, C, H, W). Output: same shape.

    Example:
        >>> logit = torch.tensor(math.log(0.1 / 0.9), requires_grad=True)
        >>> y = concrete_dropout(torch.ones(4, 8), logit, seed=0)
        >>> y.sum().backward(); logit.grad is not None
        True
    """
    check_floating(input)
    if not isinstance(p_logit, torch.Tensor) or p_logit.numel() != 1 or not p_logit.is_floating_point():
        raise TypeError(f"p_logit must be a one-element floating-point tensor, got {p_logit!r}")
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    dims = check_dims(shared_dims, input.dim()) if shared_dims else ()
    stream = open_stream(seed, offset, generator, input.device)
    if not training:
        return input
    return apply_concrete(input, p_logit, float(temperature), dims, stream)


def apply_concrete(
    input: torch.Tensor, p_logit: torch.Tensor, temperature: float, dims: tuple[int, ...], stream: object
) -> torch.Tensor:
    """The unchecked core of :func:`concrete_dropout` in training: one uniform per element of
    the mask shape, drawn from ``stream``."""
    if _dtensor.routes(input):  # each rank's block of the one-process draw
        return _dtensor.apply_concrete(input, p_logit, dims, stream, lambda x, u, logit: _relaxed(
            x, u, logit, temperature))
    shape = mask_shape(input.shape, dims)
    u = draw_uniform(stream, math.prod(shape), opmath(input), input.device).view(shape)
    return _relaxed(input, u, p_logit, temperature)


def _relaxed(x: torch.Tensor, u: torch.Tensor, p_logit: torch.Tensor, temperature: float) -> torch.Tensor:
    """``x * (1 - z) / sigmoid(-p_logit)`` with ``z = sigmoid((p_logit + log u - log(1 - u)) / t)``,
    in ``u``'s dtype (the opmath dtype of ``x``), rounded once to ``x``'s."""
    logit = p_logit.to(u.dtype).reshape(())
    z = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / temperature)
    keep_scale = (1.0 - z) / torch.sigmoid(-logit)
    return (x.to(u.dtype) * keep_scale).to(x.dtype)


def concrete_regularizer(
    p: torch.Tensor, weight_sq_sum: torch.Tensor | float, input_dim: int, weight_regularizer: float,
    dropout_regularizer: float,
) -> torch.Tensor:
    r"""The Concrete dropout regularizer of one layer.

    ``weight_regularizer * ||W||^2 / (1 - p)
    + dropout_regularizer * input_dim * (p log p + (1 - p) log(1 - p))``.

    Args:
        p: drop probability in (0, 1), a tensor (gradients flow to it).
        weight_sq_sum: ``||W||^2``, the sum of squares of the following layer's parameters.
        input_dim: that layer's input dimension (features, or channels for the spatial form).
        weight_regularizer: ``l^2 / N``.
        dropout_regularizer: ``2 / N``.

    Shape:
        ``p``: 0-dim. Output: 0-dim.

    Example:
        >>> r = concrete_regularizer(torch.tensor(0.5), 2.0, 10, 1e-2, 1e-1)
        >>> round(float(r), 6) == round(1e-2 * 2.0 / 0.5 + 1e-1 * 10 * math.log(0.5), 6)
        True
    """
    return concrete_regularizer_from_logit(
        torch.logit(p), weight_sq_sum, input_dim, weight_regularizer, dropout_regularizer
    )


def concrete_regularizer_from_logit(
    p_logit: torch.Tensor, weight_sq_sum: torch.Tensor | float, input_dim: int, weight_regularizer: float,
    dropout_regularizer: float,
) -> torch.Tensor:
    r""":func:`concrete_regularizer` with ``p = sigmoid(p_logit)``, finite for every finite logit.

    ``p`` and ``1 - p`` are taken as ``sigmoid(+-p_logit)`` and their logarithms as
    ``logsigmoid(+-p_logit)``: computing them from ``p`` would round ``p`` to exactly 0 or 1 in
    float32 once ``|p_logit|`` passes about 17 (p = 1) or 103 (p = 0), and ``0 * log 0`` and
    ``||W||^2 / 0`` are then NaN and inf in the loss and its gradient.

    Args:
        p_logit: the logit of the drop probability (0-dim, gradients flow to it).
        weight_sq_sum, input_dim, weight_regularizer, dropout_regularizer: as in
            :func:`concrete_regularizer`.

    Shape:
        ``p_logit``: 0-dim. Output: 0-dim.

    Example:
        >>> r = concrete_regularizer_from_logit(torch.tensor(40.0), 2.0, 10, 1e-2, 1e-1)
        >>> bool(torch.isfinite(r))
        True
    """
    p = torch.sigmoid(p_logit)
    keep = torch.sigmoid(-p_logit)
    weight_term = weight_regularizer * weight_sq_sum / keep
    entropy_term = p * F.logsigmoid(p_logit) + keep * F.logsigmoid(-p_logit)
    return weight_term + dropout_regularizer * input_dim * entropy_term
