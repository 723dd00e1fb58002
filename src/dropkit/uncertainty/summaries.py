"""Predictive summaries of T MC dropout passes: classification and regression.

Classification quantities follow Gal, "Uncertainty in Deep Learning" (PhD thesis, 2016,
section 3.3.1) and Houlsby et al., "Bayesian Active Learning for Classification and Preference
Learning" (2011) for BALD; regression follows Gal & Ghahramani, ICML 2016 (section 4 and
appendix), and Kendall & Gal, "What Uncertainties Do We Need in Bayesian Deep Learning for
Computer Vision?" (NeurIPS 2017) for the heteroscedastic head. Entropies are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dropkit.uncertainty._checks import check_positive, check_probs

__all__ = [
    "ClassificationSummary",
    "RegressionSummary",
    "classification_summary",
    "regression_summary",
    "gal_tau",
    "gal_log_likelihood",
    "weight_decay_for_tau",
]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    # xlogy gives 0 * log 0 = 0, the limit that entropy needs for one-hot vectors.
    return -torch.special.xlogy(p, p).sum(-1)


@dataclass(frozen=True)
class ClassificationSummary:
    """What :func:`classification_summary` returns; every field has one entry per input (N)."""

    mean_probs: torch.Tensor
    predicted: torch.Tensor
    predictive_entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    variation_ratio: torch.Tensor


def classification_summary(probs: torch.Tensor) -> ClassificationSummary:
    r"""Summarize ``T`` MC dropout passes of class probabilities.

    With ``p_t = softmax(f(x; \hat W_t))`` and ``\bar p = \frac1T \sum_t p_t``:

    * ``mean_probs`` = ``\bar p``, ``predicted`` = ``argmax_c \bar p_c``;
    * ``predictive_entropy`` = ``H[\bar p] = -\sum_c \bar p_c \log \bar p_c`` (total uncertainty);
    * ``expected_entropy`` = ``\frac1T \sum_t H[p_t]`` (aleatoric part);
    * ``mutual_information`` = ``H[\bar p] - \frac1T \sum_t H[p_t]``, BALD's score (Houlsby et
      al. 2011), the information about the weights an observed label would give (epistemic
      part; clamped at 0 against rounding);
    * ``variation_ratio`` = ``1 - f_mode / T``, with ``f_mode`` the number of passes whose
      argmax is the most frequent class (Gal 2016, eq. 3.19).

    Args:
        probs: per-pass probabilities (softmax of each pass; see :func:`mc_probs`).

    Shape:
        probs: ``(T, N, C)``. Output fields: ``mean_probs`` ``(N, C)``, the others ``(N,)``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # T=2 passes, N=1, C=2
        >>> s = classification_summary(probs)
        >>> round(float(s.mutual_information), 6) == round(math.log(2), 6), float(s.variation_ratio)
        (True, 0.5)
    """
    probs = check_probs(probs, 3, "(T, N, C)")
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    mean = probs.mean(0)
    total = _entropy(mean)
    expected = _entropy(probs).mean(0)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
    return ClassificationSummary(
        mean_probs=mean,
        predicted=mean.argmax(-1),
        predictive_entropy=total,
        expected_entropy=expected,
        mutual_information=(total - expected).clamp_min(0.0),
        variation_ratio=1.0 - votes.max(-1).values.to(mean.dtype) / probs.shape[0],
    )


@dataclass(frozen=True)
class RegressionSummary:
    """What :func:`regression_summary` returns; every field has the shape of one pass's mean."""

    mean: torch.Tensor
    epistemic_variance: torch.Tensor
    aleatoric_variance: torch.Tensor
    total_variance: torch.Tensor


def regression_summary(
    outputs: torch.Tensor, tau: float | None = None, *, heteroscedastic: bool = False
) -> RegressionSummary:
    r"""Predictive mean and variance of ``T`` MC dropout passes of a regression model.

    ``mean = \frac1T \sum_t \hat y_t`` and ``epistemic_variance = \frac1T \sum_t \hat y_t^2 -
    mean^2`` (the spread of the passes). ``total_variance`` adds the observation noise: ``1 /
    tau`` for a model precision ``tau`` (Gal & Ghahramani 2016, eq. 8; see :func:`gal_tau`), or,
    for a heteroscedastic head that predicts a log variance ``s_t`` per input (Kendall & Gal
    2017), ``\frac1T \sum_t \exp(s_t)``. With neither, the aleatoric part is 0.

    Args:
        outputs: stacked MC outputs (from :func:`mc_predict`). For ``heteroscedastic=True`` the
            last dimension has size 2: ``[..., 0]`` the mean, ``[..., 1]`` the log variance.
        tau: model precision (> 0), or None.
        heteroscedastic: read the noise from the model's log-variance output.

    Shape:
        outputs: ``(T, N, *)`` (``(T, N, *, 2)`` if heteroscedastic). Fields: ``(N, *)``.

    Example:
        >>> s = regression_summary(torch.tensor([[1.0], [3.0]]), tau=4.0)  # T=2, N=1
        >>> s.mean.tolist(), s.epistemic_variance.tolist(), s.total_variance.tolist()
        ([2.0], [1.0], [1.25])
    """
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        raise TypeError(f"outputs must be a floating-point tensor (T, N, *), got {type(outputs).__name__}")
    if outputs.dim() < 2 or 0 in outputs.shape:
        shape = tuple(outputs.shape)
        raise ValueError(f"outputs must have shape (T, N, *) with no empty dimension, got {shape}")
    if not isinstance(heteroscedastic, bool):
        raise TypeError(f"heteroscedastic must be a bool, got {heteroscedastic!r}")
    outputs = outputs.to(torch.promote_types(outputs.dtype, torch.float32))
    if heteroscedastic:
        if tau is not None:
            raise ValueError(f"pass tau or heteroscedastic=True, not both (got tau={tau!r})")
        if outputs.dim() < 3 or outputs.shape[-1] != 2:
            raise ValueError(
                "heteroscedastic outputs must be (T, N, *, 2) = (mean, log variance), "
                f"got {tuple(outputs.shape)}"
            )
        means, aleatoric = outputs[..., 0], outputs[..., 1].exp().mean(0)
    else:
        means = outputs
        noise = 0.0 if tau is None else 1.0 / check_positive(tau, "tau")
        aleatoric = torch.full_like(outputs[0], noise)
    epistemic = means.var(0, unbiased=False)
    return RegressionSummary(
        mean=means.mean(0),
        epistemic_variance=epistemic,
        aleatoric_variance=aleatoric,
        total_variance=epistemic + aleatoric,
    )


def _check_prior(length_scale: float, p: float, n: int) -> tuple[float, float]:
    length_scale = check_positive(length_scale, "length_scale")
    p = check_positive(p, "p", allow_zero=True)
    if p >= 1.0:
        raise ValueError(f"p must be in [0, 1), got {p!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return length_scale, p


def gal_tau(
    length_scale: float, p: float, n: int, weight_decay: float | None = None, *,
    torch_weight_decay: float | None = None,
) -> float:
    r"""Model precision from prior length-scale and weight decay: ``tau = l^2 (1 - p) / (2 N lambda)``.

    Gal & Ghahramani 2016, eq. 7: for a network trained with dropout rate ``p`` on ``N`` points,
    under a prior of length-scale ``l``. Two conventions name the L2 coefficient differently;
    give exactly one:

    * ``weight_decay`` is Gal's ``lambda``, which multiplies ``sum W^2`` in the loss
      ``mean_n E_n + lambda sum W^2``;
    * ``torch_weight_decay`` is what ``torch.optim`` takes as ``weight_decay``: it adds
      ``wd * W`` to the gradient, the gradient of ``(wd / 2) sum W^2``, so ``lambda = wd / 2``
      and ``tau = l^2 (1 - p) / (N wd)`` (for a mean loss, as torch's losses are by default).

    :func:`weight_decay_for_tau` is the inverse.

    Args:
        length_scale: prior length-scale ``l`` (> 0).
        p: dropout rate in [0, 1).
        n: number of training points (>= 1).
        weight_decay: Gal's ``lambda`` (> 0).
        torch_weight_decay: the ``weight_decay`` given to a torch optimizer (> 0).

    Shape:
        Scalars in, a float out.

    Example:
        >>> round(gal_tau(1e-2, 0.5, 100, 1e-6), 12)
        0.25
        >>> round(gal_tau(1e-2, 0.5, 100, torch_weight_decay=2e-6), 12)  # the same training
        0.25
    """
    if (weight_decay is None) == (torch_weight_decay is None):
        raise ValueError("give exactly one of weight_decay (Gal's lambda) and torch_weight_decay, got "
                         f"weight_decay={weight_decay!r}, torch_weight_decay={torch_weight_decay!r}")
    length_scale, p = _check_prior(length_scale, p, n)
    if weight_decay is not None:
        lam = check_positive(weight_decay, "weight_decay")
    else:
        lam = check_positive(torch_weight_decay, "torch_weight_decay") / 2.0
    return length_scale**2 * (1.0 - p) / (2.0 * n * lam)


def weight_decay_for_tau(
    tau: float, length_scale: float, p: float, n: int, *, convention: str = "torch"
) -> float:
    r"""The weight decay that gives model precision ``tau``: the inverse of :func:`gal_tau`.

    ``convention="torch"`` returns the ``weight_decay`` to give a torch optimizer,
    ``wd = l^2 (1 - p) / (N tau)``; ``convention="gal"`` returns Gal's ``lambda = wd / 2``.

    Args:
        tau: the model precision wanted (> 0), for instance ``1 / noise variance``.
        length_scale: prior length-scale ``l`` (> 0).
        p: dropout rate in [0, 1).
        n: number of training points (>= 1).
        convention: "torch" or "gal".

    Shape:
        Scalars in, a float out.

    Example:
        >>> wd = weight_decay_for_tau(0.25, 1e-2, 0.5, 100)
        >>> round(wd, 12), round(gal_tau(1e-2, 0.5, 100, torch_weight_decay=wd), 12)
        (2e-06, 0.25)
    """
    if convention not in ("torch", "gal"):
        raise ValueError(f"convention must be 'torch' or 'gal', got {convention!r}")
    tau = check_positive(tau, "tau")
    length_scale, p = _check_prior(length_scale, p, n)
    torch_wd = length_scale**2 * (1.0 - p) / (n * tau)
    return torch_wd if convention == "torch" else torch_wd / 2.0


def gal_log_likelihood(outputs: torch.Tensor, y: torch.Tensor, tau: float) -> float:
    r"""Test log-likelihood of MC dropout under Gaussian noise of precision ``tau``, per point.

    For each target ``y_n`` with ``D`` values (Gal & Ghahramani 2016, eq. 8, estimated with ``T``
    passes): ``\log p(y_n) \approx \operatorname{logsumexp}_t(-\tfrac12 \tau \lVert y_n - \hat
    y_{n,t}\rVert^2) - \log T - \tfrac D2 \log 2\pi + \tfrac D2 \log \tau``, averaged over the
    points: the joint density of all of a point's values, an isotropic Gaussian mixture. With
    ``T = 1`` this is the Gaussian log-density of ``y`` around ``\hat y`` with covariance
    ``I / tau``.

    Args:
        outputs: MC predictions ``\hat y`` in the units of ``y``.
        y: targets.
        tau: model precision (> 0).

    Shape:
        outputs: ``(T, N, *)``; y: ``(N, *)``, or ``(N,)`` for a model with one output
        ``(T, N, 1)``. Output: a float.

    Example:
        >>> ll = gal_log_likelihood(torch.zeros(1, 1), torch.zeros(1), tau=1.0)
        >>> round(ll, 6) == round(-0.5 * math.log(2 * math.pi), 6)
        True
        >>> gal_log_likelihood(torch.zeros(1, 1, 1), torch.zeros(1), tau=1.0) == ll
        True
    """
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        raise TypeError(f"outputs must be a floating-point tensor (T, N), got {type(outputs).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor (N,), got {type(y).__name__}")
    one_output = outputs.dim() == 3 and outputs.shape[2] == 1 and y.dim() == 1
    target = y.unsqueeze(1) if one_output else y  # one output: y (N,) for outputs (T, N, 1)
    if outputs.dim() < 2 or 0 in outputs.shape or tuple(target.shape) != tuple(outputs.shape[1:]):
        shapes = f"{tuple(outputs.shape)} and {tuple(y.shape)}"
        raise ValueError(f"outputs (T, N, *) and y (N, *) do not match: {shapes}")
    tau = check_positive(tau, "tau")
    dtype = torch.promote_types(outputs.dtype, torch.float64)
    sq = (target.to(dtype) - outputs.to(dtype)) ** 2
    sq = sq.reshape(sq.shape[0], sq.shape[1], -1).sum(dim=2)  # (T, N): squared norms per point
    d = math.prod(outputs.shape[2:])
    ll = torch.logsumexp(-0.5 * tau * sq, dim=0) - math.log(outputs.shape[0])
    ll = ll - 0.5 * d * math.log(2 * math.pi) + 0.5 * d * math.log(tau)
    return float(ll.mean())
