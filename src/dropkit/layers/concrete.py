"""ConcreteDropout: dropout with a learned rate (Gal, Hron and Kendall, NeurIPS 2017)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dropkit.functional._checks import check_floating, check_p
from dropkit.functional.concrete import apply_concrete, concrete_regularizer_from_logit
from dropkit.layers._base import StreamModule

__all__ = ["ConcreteDropout", "concrete_regularization"]


class ConcreteDropout(StreamModule):
    r"""Relaxed-Bernoulli dropout whose drop probability ``p`` is a learned parameter.

    Training: ``y = layer(x * (1 - z) / (1 - p))`` with
    ``z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / t)``, ``u ~ U(0, 1)`` from the
    stream (one word per mask element), ``t = 0.1`` (2/3 with ``spatial=True``, one mask value
    per (sample, channel)). Evaluation: ``y = layer(x)``, the mean-field approximation (for MC
    dropout at test time keep the module in training mode). ``p = sigmoid(p_logit)`` with
    ``p_logit`` an nn.Parameter, so ``p`` stays in the open interval (0, 1).

    The regularizer of Gal et al. (the KL term of their objective, as in the authors' code)

        R = weight_regularizer * ||W||^2 / (1 - p)
            + dropout_regularizer * input_dim * (p log p + (1 - p) log(1 - p))

    is :meth:`regularization`, with ``W`` the parameters of the wrapped ``layer`` and
    ``input_dim`` the features per sample of the last input (channels for ``spatial=True``);
    :func:`concrete_regularization` sums it over a model: ``loss = task_loss +
    concrete_regularization(model)``. Typical values for ``N`` training points and prior
    length-scale ``l``: ``weight_regularizer = l^2 / N``, ``dropout_regularizer = 2 / N``.

    Args:
        layer: the layer applied after the dropout (its weights enter the regularizer), or
            None for dropout alone.
        p: initial drop probability, in the open interval (0, 1). Default: 0.1.
        weight_regularizer: coefficient of the weight term, >= 0. Default: 1e-6.
        dropout_regularizer: coefficient of the entropy term, >= 0. Default: 1e-5.
        spatial: one mask value per (sample, channel) of (N, C, *) inputs, temperature 2/3.
        temperature: override the relaxation temperature (> 0).
        seed, generator: own stream ``(seed, 0)`` or a seed per call from ``generator``; see StreamModule.

    Shape:
        Input: ``(N, *)`` (``(N, C, *)`` with ``spatial``). Output: that of ``layer``.

    Example:
        >>> m = ConcreteDropout(nn.Linear(8, 2), p=0.2, seed=0)
        >>> loss = m(torch.randn(4, 8)).pow(2).mean() + concrete_regularization(m)
        >>> loss.backward(); m.p_logit.grad is not None
        True
    """

    def __init__(
        self, layer: nn.Module | None = None, p: float = 0.1, weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5, *, spatial: bool = False, temperature: float | None = None,
        seed: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        p = check_p(p, open_interval=True)
        coefficients = {"weight_regularizer": weight_regularizer, "dropout_regularizer": dropout_regularizer}
        for name, value in coefficients.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if temperature is None:
            temperature = 2.0 / 3.0 if spatial else 0.1
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (0 < temperature < math.inf)
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.layer = layer
        self.p_logit = nn.Parameter(torch.tensor(math.log(p) - math.log1p(-p)))
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.spatial = bool(spatial)
        self.temperature = float(temperature)
        self.input_dim: int | None = None

    @property
    def p(self) -> float:
        """The current drop probability ``sigmoid(p_logit)`` as a float; assignable in (0, 1)."""
        # float64: in float32 the sigmoid of a logit below about -103 underflows to 0.
        return float(torch.sigmoid(self.p_logit.detach().double()))

    @p.setter
    def p(self, value: float) -> None:
        value = check_p(value, open_interval=True)
        with torch.no_grad():
            self.p_logit.fill_(math.log(value) - math.log1p(-value))

    def _shared_dims(self, input: torch.Tensor) -> tuple[int, ...]:
        if not self.spatial:
            return ()
        if input.dim() < 3:
            raise ValueError(
                f"spatial ConcreteDropout expects input of shape (N, C, *spatial), got {tuple(input.shape)}"
            )
        return tuple(range(2, input.dim()))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_floating(input)
        if input.dim() < 1:
            raise ValueError("ConcreteDropout expects input of shape (N, *), got a 0-dim tensor")
        dims = self._shared_dims(input)
        self.input_dim = int(input.shape[1]) if self.spatial else math.prod(input.shape[1:])
        x = input
        if self.training:
            x = apply_concrete(input, self.p_logit, self.temperature, dims, self.stream())
        return self.layer(x) if self.layer is not None else x

    def regularization(self) -> torch.Tensor:
        """The regularizer ``R`` of this layer (0-dim, differentiable in ``p_logit`` and ``W``)."""
        if self.input_dim is None:
            raise RuntimeError("ConcreteDropout.regularization needs one forward call to know input_dim")
        sq = sum((w.pow(2).sum() for w in self.layer.parameters()), torch.zeros(())) if self.layer else 0.0
        return concrete_regularizer_from_logit(
            self.p_logit, sq, self.input_dim, self.weight_regularizer, self.dropout_regularizer
        )

    def extra_repr(self) -> str:
        return (
            f"p={self.p:.4g}, weight_regularizer={self.weight_regularizer}, "
            f"dropout_regularizer={self.dropout_regularizer}, spatial={self.spatial}, "
            f"temperature={self.temperature:.4g}" + self._stream_repr()
        )


def concrete_regularization(model: nn.Module) -> torch.Tensor:
    """Sum of :meth:`ConcreteDropout.regularization` over every ConcreteDropout in ``model``.

    Example:
        >>> model = nn.Sequential(ConcreteDropout(nn.Linear(3, 3)), nn.ReLU())
        >>> _ = model(torch.ones(2, 3))
        >>> concrete_regularization(model).dim()
        0
    """
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    return sum(terms, torch.zeros(()))
