"""Attention dropout of third-party models on dropkit's stream, through each library's own hooks.

* Hugging Face transformers: attention layers call ``ALL_ATTENTION_FUNCTIONS.get_interface(
  config._attn_implementation, eager_attention_forward)`` with ``dropout=self.dropout.p``. dropkit
  registers ``"dropkit|eager"`` and ``"dropkit|sdpa"`` with the library's ``AttentionInterface``
  (and the matching mask functions with ``AttentionMaskInterface``) and switches the config's
  ``_attn_implementation``. The registered function reads the layer's dropout module, which
  :func:`dropkit.patch.patch` has replaced by a :class:`dropkit.Dropout`: when that module is
  active it runs :func:`dropkit.functional.scaled_dot_product_attention` on the module's stream,
  otherwise it calls the original implementation unchanged (evaluation is bit for bit the
  library's own). Deciding on the dropout module's flag, not the layer's, is what lets
  :func:`dropkit.uncertainty.mc_dropout` switch attention dropout on.
* timm: ``Attention`` calls ``F.scaled_dot_product_attention(..., dropout_p=self.attn_drop.p)``
  when ``fused_attn`` is set and ``self.attn_drop(attn)`` otherwise. A forward pre-hook turns
  the fused path off exactly while ``attn_drop`` is active, so the replaced ``attn_drop`` draws
  the mask; evaluation keeps timm's fused kernel.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from dropkit import _torch
from dropkit.functional.attention import attention_on_stream
from dropkit.layers._base import StreamModule

__all__ = ["hf_dropout_child", "switch_hf", "restore_hf", "timm_dropout_child", "hook_timm", "unhook_timm"]

# Written into the attention module's __dict__: (dropout child name, original implementation).
HF_STATE = "_dropkit_hf_attention"
TIMM_STATE = "_dropkit_timm_attention"
_PREFIX = "dropkit|"
_SUPPORTED = ("eager", "sdpa")




def _active(child: object) -> bool:
    return isinstance(child, StreamModule) and child.training and getattr(child, "p", 0.0) > 0.0


def hf_dropout_child(module: nn.Module, child_name: str) -> str | None:
    """Why ``module`` cannot go through the registered function, or None if it can."""
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if "transformers" not in sys.modules or config is None:
        return "not a Hugging Face attention layer with a config"
    if implementation not in _SUPPORTED and not (isinstance(implementation, str)
                                                 and implementation.startswith(_PREFIX)):
        return f"attention implementation {implementation!r} has no dropkit counterpart"
    if getattr(module, "reorder_and_upcast_attn", False):
        return "reorder_and_upcast_attn bypasses the attention interface"
    return None


def _original(module: nn.Module, name: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _attention(name: str) -> Callable:
    """The function registered as ``"dropkit|" + name``."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                  **kwargs):
        child_name, _ = module.__dict__.get(HF_STATE, (None, None))
        child = getattr(module, child_name, None) if child_name else None
        if not _active(child):
            if isinstance(child, StreamModule):
                dropout = 0.0  # the replaced module decides; it is off
            if is_causal is not None:
                kwargs["is_causal"] = is_causal
            return _original(module, name)(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, **kwargs)
        groups = getattr(module, "num_key_value_groups", 1)
        length = query.shape[2]
        mask = attention_mask
        if mask is not None and mask.shape[-1] != key.shape[-2]:
            mask = mask[..., : key.shape[-2]]
        causal = False
        if name == "sdpa":
            causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
            causal = length > 1 and mask is None and causal
            if causal and key.shape[-2] > length:
                key, value = key[:, :, :length], value[:, :, :length]
        # The one place the dropout module's stream is read; the attention reserves its words.
        out = attention_on_stream(query, key, value, mask, child.p, causal, scaling, groups > 1,
                                  child.stream())
        return out.transpose(1, 2).contiguous(), None

    attention.__name__ = attention.__qualname__ = f"dropkit_{name}_attention"
    return attention


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for name in _SUPPORTED:
        if _PREFIX + name not in ALL_ATTENTION_FUNCTIONS:
            ALL_ATTENTION_FUNCTIONS.register(_PREFIX + name, _attention(name))
            ALL_MASK_ATTENTION_FUNCTIONS.register(_PREFIX + name, ALL_MASK_ATTENTION_FUNCTIONS[name])


def switch_hf(module: nn.Module, child_name: str) -> None:
    """Route ``module``'s attention through dropkit's registered function (its config is switched)."""
    _register()
    config = module.config
    current = config._attn_implementation
    original = current.removeprefix(_PREFIX)
    module.__dict__[HF_STATE] = (child_name, original)
    if not current.startswith(_PREFIX):
        config._attn_implementation = _PREFIX + original


def restore_hf(module: nn.Module) -> bool:
    """Undo :func:`switch_hf`; True if ``module`` had been switched."""
    state = module.__dict__.pop(HF_STATE, None)
    if state is None:
        return False
    config = module.config
    if isinstance(config._attn_implementation, str) and config._attn_implementation.startswith(_PREFIX):
        config._attn_implementation = state[1]
    return True


def timm_dropout_child(module: nn.Module) -> bool:
    """Whether ``module`` is timm-style attention: a ``fused_attn`` flag and an ``attn_drop`` module."""
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(
        _torch.child_slots(module).get("attn_drop"), nn.Module
    )


def _timm_pre_hook(module: nn.Module, args: tuple) -> None:
    fused = module.__dict__[TIMM_STATE][1]
    module.fused_attn = fused and not _active(module.attn_drop)


def hook_timm(module: nn.Module) -> None:
    """Make ``module.attn_drop`` draw the attention mask whenever it is active."""
    if TIMM_STATE in module.__dict__:
        return
    handle = module.register_forward_pre_hook(_timm_pre_hook)
    module.__dict__[TIMM_STATE] = (handle, module.fused_attn)


def unhook_timm(module: nn.Module) -> bool:
    """Undo :func:`hook_timm`; True if ``module`` had been hooked."""
    state = module.__dict__.pop(TIMM_STATE, None)
    if state is None:
        return False
    handle, fused = state
    handle.remove()
    module.fused_attn = fused
    return True
