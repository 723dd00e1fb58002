"""Dropout, residual add and normalization as one operation (the transformer block's seam).

Pre-LN and post-LN transformer blocks (Vaswani et al., 2017; Xiong et al., 2020) end every
sub-layer with ``norm(dropout(sublayer(x)) + residual)``. Done op by op this reads and writes
the whole activation three times and keeps a byte-per-element mask; on CUDA with triton the
three steps run as one kernel that keeps 1 bit per element (or nothing). On every other device
the same function runs dropkit's dropout followed by torch's add and norm, with the same mask
for the same ``(seed, offset)``, so results agree across devices.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from dropkit import _dtensor, ops
from dropkit.functional._checks import check_floating, check_mask_storage, check_p, open_stream
from dropkit.functional.dropout import apply_dropout, inverted_scale
from dropkit.rng import keep_threshold

__all__ = ["dropout_add_norm", "NORMS"]

NORMS = ("layer", "rms")


def _check_args(x, residual, weight, bias, norm, eps, prenorm, training) -> None:
    check_floating(x, "x")
    check_floating(residual, "residual")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the normalized one), got a 0-dim tensor")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if residual.dtype != x.dtype or residual.device != x.device:
        raise TypeError(
            f"residual must match x in dtype and device ({x.dtype}, {x.device}), "
            f"got {residual.dtype} on {residual.device}"
        )
    n = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        check_floating(t, name)
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},) (the last dimension of x), got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name} must match x in dtype and device ({x.dtype}, {x.device}), got {t.dtype}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite real number > 0, got {eps!r}")
    if not isinstance(prenorm, bool):
        raise TypeError(f"prenorm must be a bool, got {prenorm!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")


def dropout_add_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    p: float, norm: str = "layer", eps: float = 1e-5, prenorm: bool = False,
    seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0, training: bool = True,
    mask_storage: str = "bits",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""``y = norm(dropout(x) + residual) * weight (+ bias)`` over the last dimension, fused.

    With ``h = dropout(x, p) + residual`` (inverted dropout, Srivastava et al., JMLR 2014):

    * ``norm="layer"`` (Ba et al., 2016): ``y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias``
      with the biased variance.
    * ``norm="rms"`` (Zhang & Sennrich, 2019): ``y = h / sqrt(mean(h^2) + eps) * weight + bias``.

    The dropout mask is :func:`dropkit.functional.dropout`'s for the same ``seed`` and
    ``offset`` (element ``i`` of ``x``, row-major, uses stream word ``w[i]``). The dropout
    product and the residual sum are rounded to the input dtype as the unfused ops do; the norm
    is computed in float32 (float64 for float64 inputs). On CUDA with triton one kernel does
    all of it and backward saves ``h``, two numbers per row and the mask as 1 bit per element
    (``mask_storage="bits"``) or no mask (``"seed"``: backward draws it again); elsewhere it
    runs dropkit's dropout and torch's add and norm.

    DTensors (x and residual on one mesh with the same placements): the mask is each rank's
    block of the one-process mask, as :func:`dropkit.functional.dropout` draws it. A plain
    ``weight`` or ``bias`` is taken as replicated. Where the last dim is sharded, the norm sees
    each row whole (``h`` is gathered along it) and the output is put back on x's placements.

    Args:
        x: the sub-layer output that dropout applies to.
        residual: the residual stream, same shape, dtype and device as ``x``.
        weight: the norm's scale, shape ``(C,)`` with ``C = x.shape[-1]``, dtype of ``x``.
        bias: the norm's shift, shape ``(C,)``, or None.
        p: probability of dropping an element of ``x``, in [0, 1].
        norm: "layer" (LayerNorm) or "rms" (RMSNorm).
        eps: added to the variance (mean square), > 0.
        prenorm: also return ``h``, the residual stream for the next block (pre-LN blocks).
        seed: the stream's 64-bit seed; None draws one from torch's default generator.
        offset: the stream offset, in 4-word blocks.
        training: apply dropout; if False, ``h = x + residual``.
        mask_storage: "bits", "seed" or "bool" (the fused kernel treats "bool" as "bits").

    Shape:
        x, residual: ``(N, *, C)``, e.g. ``(N, L, C)`` for N sequences of L tokens of width C.
        weight, bias: ``(C,)``. Output ``y`` (and ``h``): ``(N, *, C)``, dtype of ``x``.

    Example:
        >>> x, res = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
        >>> w, b = torch.ones(8), torch.zeros(8)
        >>> y, h = dropout_add_norm(x, res, w, b, p=0.1, seed=3, prenorm=True)
        >>> from dropkit.functional import dropout
        >>> torch.equal(h, dropout(x, 0.1, seed=3) + res)
        True
        >>> torch.allclose(y, torch.nn.functional.layer_norm(h, (8,), w, b), atol=1e-6)
        True
    """
    _check_args(x, residual, weight, bias, norm, eps, prenorm, training)
    p = check_p(p)
    mask_storage = check_mask_storage(mask_storage)
    stream = open_stream(seed, offset, None, x.device)
    active = training and p > 0.0
    threshold, scale = keep_threshold(p), inverted_scale(p) if active else 1.0
    c = x.shape[-1]
    if not _dtensor.routes(x) and ops.fuses_dropout_add_norm(x):
        # The fused kernel draws one word per element of x, as dropout would.
        position = stream.take(x.numel()) if active else (0, 0)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, residual, weight, bias)
        )
        y, h = ops.dropout_add_norm(
            x.reshape(-1, c).contiguous(), residual.reshape(-1, c).contiguous(), weight.contiguous(),
            bias.contiguous() if bias is not None else None, *position, threshold, scale, active,
            norm == "rms", float(eps), needs_grad and mask_storage != "seed",
        )
        y, h = y.view(x.shape), h.view(x.shape)
    else:
        d = apply_dropout(x, threshold, scale, (), stream, mask_storage, False) if active else x
        h = d + residual

        def normalize(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            if norm == "layer":
                return F.layer_norm(h, (c,), weight, bias, float(eps))
            y = F.rms_norm(h, (c,), weight, float(eps))
            return y if bias is None else y + bias

        if _dtensor.is_dtensor(h):
            y = _dtensor.rowwise(normalize, h, weight, bias)
        else:
            y = normalize(h, weight, bias)
    return (y, h) if prenorm else y
