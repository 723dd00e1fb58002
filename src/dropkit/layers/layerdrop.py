"""LayerDrop (Fan, Grave and Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", 2019): skip whole layers of a stack during training, on dropkit's stream.

Where drop path zeroes a residual branch per sample, LayerDrop skips a layer for the whole
batch, so the skipped layer costs nothing; Hugging Face's ``layerdrop`` (wav2vec2, BART,
Whisper) is this rule drawn from torch's generator. Nothing is rescaled: the paper trains with
the identity in place of a dropped layer and evaluates with every layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from dropkit.functional._checks import check_p
from dropkit.functional.droppath import drop_path_rates
from dropkit.layers._base import StreamModule
from dropkit.rng import keep_threshold, philox_words, signed_to_seed

__all__ = ["LayerDrop", "LAYER_DROP_RULES"]

LAYER_DROP_RULES = ("constant", "linear", "huang")


def _check_rule(rule: object) -> str:
    if rule not in LAYER_DROP_RULES:
        raise ValueError(f"rule must be one of {LAYER_DROP_RULES}, got {rule!r}")
    return rule  # type: ignore[return-value]


def _host_int(value: int | torch.Tensor) -> int:
    return signed_to_seed(int(value)) if isinstance(value, torch.Tensor) else int(value)


class LayerDrop(StreamModule):
    r"""Run a stack of layers, skipping layer ``i`` with probability ``p_i`` in training.

    Training: ``x_{i+1} = x_i`` if ``w_i < round(p_i 2^32)`` else ``layer_i(x_i)``, where
    ``w_0 .. w_{L-1}`` are the ``L`` stream words a call takes (one per layer, for the whole
    batch). Evaluation: every layer runs. The per-layer rates ``p_i`` follow ``rule``:

    * ``"constant"``: ``p_i = p`` (the paper's LayerDrop);
    * ``"linear"``: ``p_i = p i / (L - 1)`` (timm's ``drop_path_rate`` linspace);
    * ``"huang"``: ``p_i = p (i + 1) / L`` (stochastic depth's ``p_l = l / L (1 - p_L)`` rule).

    Each layer must return a tensor of the shape it takes; extra positional and keyword
    arguments of the call are passed to every layer that runs.

    Args:
        layers: the stack, an iterable of modules (kept as an ``nn.ModuleList``).
        p: the rate of the rule (the deepest layer's rate for "linear" and "huang"), in [0, 1].
        rule: "constant" (default), "linear" or "huang".
        seed: give the module its own stream (kept in the state_dict); see StreamModule.
        generator: draw seeds from this generator instead of torch's default one.

    Shape:
        Input: what the first layer takes, ``(N, *)``. Output: the same shape.

    Example:
        >>> stack = LayerDrop([nn.Linear(4, 4) for _ in range(6)], p=0.5, seed=0)
        >>> stack.rates()
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
        >>> stack(torch.ones(2, 4)).shape
        torch.Size([2, 4])
        >>> stack.last_kept  # the layers the call ran: those whose word is >= round(0.5 * 2**32)
        [False, True, True, True, True, False]
    """

    def __init__(
        self,
        layers: Iterable[nn.Module],
        p: float = 0.0,
        rule: str = "constant",
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed=seed, generator=generator)
        modules = list(layers)
        bad = [type(m).__name__ for m in modules if not isinstance(m, nn.Module)]
        if bad or not modules:
            raise TypeError(f"layers must be a non-empty iterable of nn.Modules, got {bad or 'none'}")
        self.layers = nn.ModuleList(modules)
        self.p = p
        self.rule = rule
        self.last_kept: list[bool] = [True] * len(modules)

    _checked_attributes = {"p": check_p, "rule": _check_rule}

    def rates(self) -> list[float]:
        """The drop rate of each layer, from ``p`` and ``rule``."""
        n = len(self.layers)
        if self.rule == "constant":
            return [self.p] * n
        return drop_path_rates(self.p, n, "linear" if self.rule == "linear" else "huang")

    def forward(self, input: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        kept = [True] * len(self.layers)
        if self.training and self.p > 0.0:
            seed, offset = self.stream().take(len(kept))
            words = philox_words(_host_int(seed), _host_int(offset), len(kept)).tolist()
            kept = [w >= keep_threshold(r) for w, r in zip(words, self.rates(), strict=True)]
        self.last_kept = kept
        x = input
        for layer, keep in zip(self.layers, kept, strict=True):
            if keep:
                x = layer(x, *args, **kwargs)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def extra_repr(self) -> str:
        s = f"p={self.p}" + (f", rule={self.rule!r}" if self.rule != "constant" else "")
        return s + self._stream_repr()
