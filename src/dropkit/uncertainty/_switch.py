"""Turning dropout on, and only dropout, for Monte Carlo dropout (Gal & Ghahramani, ICML 2016).

``model.train()`` is the common way to keep dropout active at prediction time, and it is wrong
for most models: it also puts BatchNorm into training mode, which normalizes with the
statistics of the prediction batch and overwrites the running statistics learned in training.
:func:`mc_dropout` sets the ``training`` flag of the dropout-family modules alone, one module
at a time (never recursively, so a wrapped module such as an LSTM under a weight-drop wrapper
keeps its own mode), and puts every flag back on exit.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from types import TracebackType

from torch import nn

from dropkit import _torch
from dropkit._attention_patch import HF_STATE, TIMM_STATE
from dropkit._select import TORCH_DROPOUTS
from dropkit.layers import GaussianNoise, StreamModule

__all__ = ["TORCH_DROPOUT_TYPES", "MCDropout", "mc_dropout", "is_dropout_module", "unswitchable_modules"]

#: torch.nn's dropout modules: their ``training`` flag is all that decides whether they drop.
TORCH_DROPOUT_TYPES = TORCH_DROPOUTS

# Attribute names under which modules commonly keep a rate they pass to a functional dropout
# (nn.MultiheadAttention.dropout, nn.LSTM.dropout, Hugging Face's attention_dropout, ...).
_RATE_ATTRIBUTES = ("dropout", "attention_dropout", "attn_dropout", "dropout_p", "dropout_rate", "p")

# A call to a functional dropout, or an attention kernel given a dropout rate, in a forward's source.
_FUNCTIONAL_DROPOUT = re.compile(
    r"\b(?:F|functional)\.(?:feature_)?(?:alpha_)?dropout(?:[123]d)?\s*\(|dropout_p\s*=\s*[^,)\n]*training"
)


def is_dropout_module(module: nn.Module) -> bool:
    """Whether :func:`mc_dropout` switches ``module`` on.

    True for torch.nn's Dropout, Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout, and for
    every :class:`dropkit.layers.StreamModule` (dropkit's whole family: channel, alpha, Gaussian
    and Concrete dropout, DropPath, DropBlock, DropConnect, WeightDrop, locked and embedding
    dropout) except :class:`dropkit.GaussianNoise`, which adds noise rather than dropping, and
    classes that set ``mc_dropout_exempt = True`` (the opt-out for other stochastic modules
    that are not dropout and should stay deterministic).

    Shape:
        Not applicable: it looks at the module's type only.

    Example:
        >>> import dropkit
        >>> is_dropout_module(dropkit.Dropout(0.1)), is_dropout_module(nn.BatchNorm1d(3))
        (True, False)
    """
    if isinstance(module, TORCH_DROPOUT_TYPES):
        return True
    if not isinstance(module, StreamModule) or isinstance(module, GaussianNoise):
        return False
    return not getattr(type(module), "mc_dropout_exempt", False)


def _forward_calls_functional_dropout(cls: type) -> bool:
    return bool(_FUNCTIONAL_DROPOUT.search(_forward_source(cls)))


# ``self.<child>.p`` in a forward: a dropout module's rate passed to a function (Hugging Face's
# attention layers give ``self.dropout.p`` to their attention function under their own flag).
_RATE_READ = re.compile(r"\bself\.(\w+)\.p\b")


@functools.lru_cache(maxsize=512)
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _reads_child_rate(module: nn.Module) -> bool:
    """Whether forward passes a dropout child's rate to a function instead of calling the child."""
    source = _forward_source(type(module))
    for child in set(_RATE_READ.findall(source)):
        sub = _torch.child_slots(module).get(child)
        if sub is not None and f"self.{child}(" not in source and getattr(sub, "p", 0) != 0:
            return True
    return False


def _routed(module: nn.Module) -> bool:
    """Whether :func:`dropkit.patch.patch` made the module's attention dropout follow its dropout child."""
    return HF_STATE in module.__dict__ or TIMM_STATE in module.__dict__


def _has_rate_attribute(module: nn.Module) -> bool:
    for name in _RATE_ATTRIBUTES:
        value = module.__dict__.get(name)
        if isinstance(value, float) and 0.0 < value < 1.0:
            return True
    return False


def unswitchable_modules(model: nn.Module) -> list[str]:
    """Names of modules that seem to drop units through torch.nn.functional with their own flag.

    Such a module (nn.MultiheadAttention, a multi-layer nn.LSTM, a custom block calling
    ``F.dropout(x, p, training=self.training)``) drops only when *it* is in training mode, and
    putting it in training mode would switch on everything else it does in training; so
    :func:`mc_dropout` leaves it alone and lists it in a warning. Detected from a float rate
    attribute in (0, 1) (``dropout``, ``attention_dropout``, ``p``, ...), from a functional
    dropout call in the source of the class's ``forward``, or from a forward that passes a child's
    rate (``self.dropout.p``) to a function, as Hugging Face attention does; a heuristic, as
    Python allows. Attention layers that :func:`dropkit.patch.patch` routed to dropkit's stream
    (Hugging Face, timm, torch's MultiheadAttention) follow their dropout child and are not listed.

    Shape:
        Not applicable: returns names as ``model.named_modules()`` gives them.

    Example:
        >>> unswitchable_modules(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1, dropout=0.1)))
        ['1']
    """
    return [
        name
        for name, module in model.named_modules()
        if not is_dropout_module(module)
        and not _routed(module)
        and (
            _has_rate_attribute(module)
            or _forward_calls_functional_dropout(type(module))
            or _reads_child_rate(module)
        )
    ]


class MCDropout:
    """The handle :func:`mc_dropout` returns: dropout is on until :meth:`restore` or the ``with`` ends.

    Attributes:
        model: the model.
        enabled: names of the modules switched to training mode.
        unswitchable: names of modules that apply dropout internally and were left alone.

    Shape:
        Not applicable: only module flags change.

    Example:
        >>> import dropkit
        >>> model = nn.Sequential(nn.Linear(2, 2), dropkit.Dropout(0.5)).eval()
        >>> handle = mc_dropout(model)
        >>> model[1].training, handle.enabled
        (True, ['1'])
        >>> handle.restore(); model[1].training
        False
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"mc_dropout needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._flags = [(module, module.training) for module in model.modules()]
        dropout = [(name, m) for name, m in model.named_modules() if is_dropout_module(m)]
        self.enabled = [name for name, _ in dropout]
        self.unswitchable = unswitchable_modules(model)
        # Warn before any flag changes: under warnings-as-errors the constructor raises, no
        # ``with`` block is entered, and nothing would put the flags back.
        if self.unswitchable:
            warnings.warn(
                "mc_dropout cannot switch on the dropout inside these modules (they call a "
                "functional dropout with their own training flag, so they keep their current mode): "
                + ", ".join(repr(n) for n in self.unswitchable),
                UserWarning,
                stacklevel=3,
            )
        elif not dropout:
            warnings.warn(
                f"mc_dropout found no dropout module in {type(model).__name__}: every "
                "stochastic pass will give the same output",
                UserWarning,
                stacklevel=3,
            )
        for _, module in dropout:
            module.training = True

    def restore(self) -> None:
        """Put back the ``training`` flag every module had when :func:`mc_dropout` was called."""
        for module, flag in self._flags:
            module.training = flag

    def __enter__(self) -> MCDropout:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def mc_dropout(model: nn.Module) -> MCDropout:
    """Switch on the dropout-family modules of ``model`` and nothing else (MC dropout).

    Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016)
    keeps dropout active at test time and averages ``T`` stochastic passes. This sets
    ``training = True`` on each module for which :func:`is_dropout_module` holds, leaving every
    other module (BatchNorm above all) in the mode it had. Works as a context manager, which
    restores the exact previous flag of every module on exit, also after an exception, or as a
    function whose returned handle's :meth:`MCDropout.restore` does the same.

    Modules that drop through torch.nn.functional under their own flag cannot be switched on
    without switching on everything else they do in training; they are named in a warning
    (see :func:`unswitchable_modules`).

    Args:
        model: any torch.nn.Module.

    Shape:
        Not applicable: only module flags change.

    Example:
        >>> import dropkit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), dropkit.Dropout(0.5)).eval()
        >>> with mc_dropout(model) as handle:
        ...     [m.training for m in model]
        [False, False, True]
        >>> handle.enabled, [m.training for m in model]
        (['2'], [False, False, False])
    """
    return MCDropout(model)
