"""What dropkit's layers do with inputs that are not plain floating-point tensors.

dropkit's ``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout`` are
subclasses of torch's classes of the same name, so code that finds dropout by torch's classes
(``isinstance(m, nn.Dropout)``, ``nn.modules.dropout._DropoutNd``) finds them. Two kinds of
callers hand them something other than a floating-point tensor, and torch's own layers accept both:

* ``torch.fx`` symbolic tracing calls ``forward`` with a ``Proxy``. torch's dropout is a leaf of
  the traced graph (one ``call_module`` node, because its class lives in ``torch.nn``); dropkit's
  layer records the same ``call_module`` node, so the traced ``GraphModule`` calls the dropkit
  layer itself, stream and all, rather than anything traced through it.
* A model quantized with ``torch.ao.quantization`` passes quantized tensors. Outside training,
  where a dropout layer is the identity, the tensor is returned unchanged, as torch does.

Anything else fails with the TypeError of :func:`dropkit.functional._checks.check_floating`.
"""

from __future__ import annotations

import torch
from torch import nn

from dropkit.functional._checks import check_floating

__all__ = ["unusual_input"]


def unusual_input(module: nn.Module, input: object, identity_in_eval: bool = True) -> object:
    """The output for an ``input`` that is not a dense floating-point tensor (see module docstring).

    Example:
        >>> import dropkit
        >>> q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
        >>> unusual_input(dropkit.Dropout(0.5).eval(), q) is q
        True
    """
    if isinstance(input, torch.fx.Proxy):
        tracer = input.tracer
        return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})
    if isinstance(input, torch.Tensor) and input.is_quantized and not module.training and identity_in_eval:
        return input
    return check_floating(input)
