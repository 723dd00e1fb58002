"""Drop-rate schedules, used like torch.optim.lr_scheduler.

A schedule holds a model and the dropout-family modules it controls (all of them, or those
matching ``include``), sets their rate for step 0 when it is built, and moves them to the rate
of the next step on each :meth:`RateSchedule.step`. ``state_dict()`` / ``load_state_dict()``
save and restore its position, so a run resumed from a checkpoint continues with the same
rates. Modules are looked up by qualified name at every step, so a model patched or unpatched
after the schedule was built is still driven.

Each layer's rate at construction is its *base rate* (like an optimizer's ``initial_lr``); a
schedule given no target rate ``p`` moves each layer towards its own base rate.

Schedules:

* :class:`Constant`: ``p(t) = p``.
* :class:`LinearWarmup`: ``p(t) = p * min(t / T, 1)``; DropBlock (Ghiasi et al. 2018) warms
  its keep probability linearly from 1 down to the target, which is the same ramp.
* :class:`EarlyDropout`: Liu et al., "Dropout Reduces Underfitting" (ICML 2023): dropout only
  before a cutoff step ``T``, constant (``p``) or falling linearly (``p (1 - t / T)``), then 0.
* :class:`LateDropout`: the same paper's converse: ``0`` before step ``T``, ``p`` from then on.
* :class:`CurriculumDropout`: Morerio et al., "Curriculum Dropout" (ICCV 2017): keep
  probability ``theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar``, so with
  ``theta_bar = 1 - p`` the rate is ``p(t) = p (1 - exp(-gamma t))``.
* :class:`DepthScaling`: stochastic depth's linear rule (Huang et al., "Deep Networks with
  Stochastic Depth", ECCV 2016): every drop path in block ``i`` of ``B`` gets ``p * i / (B - 1)``.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import nn

from dropkit._select import (
    ModuleFilter,
    drop_prob_path,
    family_modules,
    get_rate,
    set_rate,
    third_party_classes,
)
from dropkit.functional._checks import check_p

__all__ = [
    "RateSchedule",
    "Constant",
    "LinearWarmup",
    "EarlyDropout",
    "LateDropout",
    "CurriculumDropout",
    "DepthScaling",
]


def _check_steps(value: object, name: str, *, positive: bool) -> int:
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name} must be {kind} int, got {value!r}")
    return int(value)


class RateSchedule:
    """Base class: drives the rates of a model's dropout-family modules step by step.

    Subclasses define :meth:`rate_at` (one layer's rate at a step, from its base rate) or, for
    rates that depend on the layer's position, :meth:`rates_at`.

    Args:
        model: the model whose dropout-family modules are driven.
        include: which of them: a glob on the qualified name, a module class, a callable
            ``(name, module) -> bool`` or a list of globs and classes. Default: all.

    Attributes:
        last_step: the step whose rates are applied (0 after construction).
        names: qualified names of the driven modules.
        base_rates: their rates when the schedule was built.

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        >>> schedule = LateDropout(net, start=2)
        >>> rates = [net[1].p]
        >>> for _ in range(3):
        ...     schedule.step()
        ...     rates.append(net[1].p)
        >>> rates
        [0.0, 0.0, 0.5, 0.5]
    """

    def __init__(self, model: nn.Module, *, include: ModuleFilter | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layers = list(family_modules(model, include))
        if not layers:
            raise ValueError(
                f"no dropout-family module in {type(model).__name__} matches include={include!r}"
            )
        self.model = model
        self.names = [name for name, _ in layers]
        self.base_rates = [get_rate(module) for _, module in layers]
        self.last_step = 0
        self._apply()

    def rate_at(self, step: int, base: float) -> float:
        """The rate of a layer whose base rate is ``base`` at ``step``."""
        raise NotImplementedError

    def rates_at(self, step: int) -> list[float]:
        """The rate of every driven layer at ``step``, in the order of :attr:`names`."""
        return [self.rate_at(step, base) for base in self.base_rates]

    def get_last_rate(self) -> list[float]:
        """The rates applied at :attr:`last_step`."""
        return self.rates_at(self.last_step)

    def _apply(self) -> None:
        for name, rate in zip(self.names, self.rates_at(self.last_step), strict=True):
            set_rate(self.model.get_submodule(name), min(max(rate, 0.0), 1.0))

    def step(self) -> None:
        """Advance one step and apply that step's rates."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model: position, base rates, names and hyper-parameters."""
        return {key: value for key, value in self.__dict__.items() if key != "model"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` and apply the rates of its step."""
        names = state_dict.get("names")
        if names != self.names:
            raise ValueError(f"state_dict drives layers {names!r}, but this schedule drives {self.names!r}")
        self.__dict__.update(state_dict)
        self._apply()


class Constant(RateSchedule):
    """``p(t) = p`` for every step (each layer's base rate when ``p`` is None).

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.1), nn.Dropout(0.2))
        >>> Constant(net, p=0.3).get_last_rate()
        [0.3, 0.3]
    """

    def __init__(
        self, model: nn.Module, p: float | None = None, *, include: ModuleFilter | None = None
    ) -> None:
        self.p = None if p is None else check_p(p)
        super().__init__(model, include=include)

    def rate_at(self, step: int, base: float) -> float:
        return base if self.p is None else self.p


class LinearWarmup(RateSchedule):
    """``p(t) = p * min(t / warmup_steps, 1)``: from 0 up to the target rate, then constant.

    DropBlock (Ghiasi et al., NeurIPS 2018) lowers ``keep_prob`` linearly from 1 to its target;
    in terms of the drop rate that is this ramp from 0.

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.4))
        >>> schedule = LinearWarmup(net, warmup_steps=4)
        >>> [round(net[0].p, 2) for _ in range(5) if schedule.step() is None]
        [0.1, 0.2, 0.3, 0.4, 0.4]
    """

    def __init__(
        self,
        model: nn.Module,
        warmup_steps: int,
        p: float | None = None,
        *,
        include: ModuleFilter | None = None,
    ) -> None:
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps", positive=True)
        self.p = None if p is None else check_p(p)
        super().__init__(model, include=include)

    def rate_at(self, step: int, base: float) -> float:
        target = base if self.p is None else self.p
        return target * min(step / self.warmup_steps, 1.0)


class EarlyDropout(RateSchedule):
    """Dropout before ``cutoff`` only (Liu et al., "Dropout Reduces Underfitting", ICML 2023).

    ``mode="constant"``: ``p(t) = p`` for ``t < cutoff``; ``mode="linear"``:
    ``p(t) = p (1 - t / cutoff)``; ``p(t) = 0`` from ``cutoff`` on.

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.2))
        >>> schedule = EarlyDropout(net, cutoff=4, mode="linear")
        >>> [round(net[0].p, 2) for _ in range(5) if schedule.step() is None]
        [0.15, 0.1, 0.05, 0.0, 0.0]
    """

    def __init__(
        self,
        model: nn.Module,
        cutoff: int,
        p: float | None = None,
        *,
        mode: str = "constant",
        include: ModuleFilter | None = None,
    ) -> None:
        if mode not in ("constant", "linear"):
            raise ValueError(f"mode must be 'constant' or 'linear', got {mode!r}")
        self.cutoff = _check_steps(cutoff, "cutoff", positive=True)
        self.p = None if p is None else check_p(p)
        self.mode = mode
        super().__init__(model, include=include)

    def rate_at(self, step: int, base: float) -> float:
        target = base if self.p is None else self.p
        if step >= self.cutoff:
            return 0.0
        return target if self.mode == "constant" else target * (1.0 - step / self.cutoff)


class LateDropout(RateSchedule):
    """No dropout before ``start``, then rate ``p`` (Liu et al., ICML 2023, "late dropout").

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.3))
        >>> LateDropout(net, start=5).get_last_rate()
        [0.0]
    """

    def __init__(
        self, model: nn.Module, start: int, p: float | None = None, *, include: ModuleFilter | None = None
    ) -> None:
        self.start = _check_steps(start, "start", positive=False)
        self.p = None if p is None else check_p(p)
        super().__init__(model, include=include)

    def rate_at(self, step: int, base: float) -> float:
        target = base if self.p is None else self.p
        return target if step >= self.start else 0.0


class CurriculumDropout(RateSchedule):
    """Curriculum dropout (Morerio et al., ICCV 2017): the rate rises from 0 towards ``p``.

    The keep probability is ``theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar`` with
    ``theta_bar = 1 - p``, i.e. ``p(t) = p (1 - exp(-gamma t))``. The paper sets ``gamma`` so
    that the rate is close to ``p`` well before the end of training (``gamma = 10 / T`` for
    ``T`` steps puts ``p(T)`` within ``exp(-10)`` of ``p``).

    Shape:
        Not applicable.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.5))
        >>> schedule = CurriculumDropout(net, gamma=math.log(2))
        >>> [round(net[0].p, 4) for _ in range(3) if schedule.step() is None]
        [0.25, 0.375, 0.4375]
    """

    def __init__(
        self, model: nn.Module, gamma: float, p: float | None = None, *, include: ModuleFilter | None = None
    ) -> None:
        if (
            isinstance(gamma, bool)
            or not isinstance(gamma, numbers.Real)
            or not math.isfinite(gamma)
            or gamma <= 0
        ):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        self.gamma = float(gamma)
        self.p = None if p is None else check_p(p)
        super().__init__(model, include=include)

    def rate_at(self, step: int, base: float) -> float:
        keep_bar = 1.0 - (base if self.p is None else self.p)
        return 1.0 - ((1.0 - keep_bar) * math.exp(-self.gamma * step) + keep_bar)


class DepthScaling(RateSchedule):
    """Stochastic depth's rule: one rate per block, growing linearly with the block's depth.

    Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016), and timm's
    ``drop_path_rate``: with the model's ``B`` residual blocks in order (``i = 0 .. B-1``, across
    stages), every driven layer inside block ``i`` gets ``p * i / (B - 1)`` (timm's
    ``linspace(0, p, B)``; one block gets ``p``), or ``p * (i + 1) / B`` with
    ``start_at_zero=False`` (the paper's ``p_l = l / L * p_L`` for ``l = 1 .. L``). The rates do
    not change with the step.

    The driven layers are the residual drop paths by default (dropkit's ``DropPath`` and
    ``StochasticDepth``, timm's ``DropPath``, torchvision's ``StochasticDepth`` and Hugging
    Face's ``*DropPath``); ``include`` selects others. A layer's block is the element of a
    numbered container (``nn.Sequential``, ``nn.ModuleList``) that holds it, the deepest one
    on its path (``blocks.3`` for ``blocks.3.drop_path1``; ``layers.1.blocks.0`` in a staged
    model), and every element of such a container counts in the depth, whether or not it has a
    driven layer (timm puts an ``Identity`` where the rate is 0). ``blocks`` names the blocks
    instead (a glob on qualified names, or a list of names). ``per="module"`` gives each driven
    layer its own rate in registration order: ``p * j / (L - 1)`` over the ``L`` layers.

    Args:
        model: the model.
        p: the rate of the deepest block, in [0, 1].
        start_at_zero: timm's linspace (True) or the paper's rule (False).
        per: "block" (default) or "module".
        blocks: the blocks, as a glob or a list of qualified names (``per="block"`` only).
        include: which layers to drive (default: the residual drop paths).

    Shape:
        Not applicable.

    Example:
        >>> import dropkit
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn, self.mlp = nn.Linear(4, 4), nn.Linear(4, 4)
        ...         self.drop_path1, self.drop_path2 = dropkit.DropPath(), dropkit.DropPath()
        >>> net = nn.Sequential(*[Block() for _ in range(5)])
        >>> schedule = DepthScaling(net, p=0.2)
        >>> [(name, round(p, 4)) for name, p in zip(schedule.names, schedule.get_last_rate())][:4]
        [('0.drop_path1', 0.0), ('0.drop_path2', 0.0), ('1.drop_path1', 0.05), ('1.drop_path2', 0.05)]
        >>> round(net[4].drop_path2.p, 4)
        0.2
    """

    def __init__(
        self,
        model: nn.Module,
        p: float,
        *,
        start_at_zero: bool = True,
        per: str = "block",
        blocks: str | Sequence[str] | None = None,
        include: ModuleFilter | None = None,
    ) -> None:
        self.p = check_p(p)
        self.start_at_zero = bool(start_at_zero)
        if per not in ("block", "module"):
            raise ValueError(f"per must be 'block' or 'module', got {per!r}")
        if blocks is not None and per != "block":
            raise ValueError(f"blocks={blocks!r} needs per='block', got per={per!r}")
        self.per = per
        if include is None:
            include = _residual_drop_path
        super().__init__(model, include=include)
        if per == "module":
            self.depths = list(range(len(self.names)))
            self.block_count = len(self.names)
        else:
            self.depths, self.block_count = _block_depths(model, self.names, blocks)
        self._apply()

    def rates_at(self, step: int) -> list[float]:
        if not hasattr(self, "depths"):  # the base class applies rates before the blocks are known
            return list(self.base_rates)
        count = self.block_count
        if self.start_at_zero:
            return [self.p * i / (count - 1) if count > 1 else self.p for i in self.depths]
        return [self.p * (i + 1) / count for i in self.depths]


def _residual_drop_path(name: str, module: nn.Module) -> bool:
    """The default selection of :class:`DepthScaling`: residual-branch drop paths."""
    from dropkit.layers import DropPath

    if isinstance(module, DropPath) or drop_prob_path(module):
        return True
    return any(isinstance(module, cls) and cls.__name__ in ("DropPath", "StochasticDepth")
               for cls, _ in third_party_classes())


def _block_of(name: str) -> tuple[str, str] | None:
    """``(container, block)`` names for the deepest numbered element on ``name``'s path."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), ".".join(parts[: i + 1])
    return None


def _block_depths(
    model: nn.Module, names: list[str], blocks: str | Sequence[str] | None
) -> tuple[list[int], int]:
    """The block index of each driven layer and the number of blocks (see :class:`DepthScaling`)."""
    order = [n for n, _ in model.named_modules()]
    if blocks is not None:
        chosen = list(blocks) if not isinstance(blocks, str) else [
            n for n in order if fnmatch.fnmatchcase(n, blocks)]
        unknown = [b for b in chosen if b not in order]
        if unknown or not chosen:
            raise ValueError(f"blocks must name modules of the model, got {blocks!r}")
        block_names = set(chosen)
    else:
        block_names = set()
        for name in names:
            found = _block_of(name)
            if found is None:
                block_names.add(name)  # outside any numbered container: a block of its own
                continue
            container = model.get_submodule(found[0])
            prefix = f"{found[0]}." if found[0] else ""
            block_names.update(prefix + child for child, _ in container.named_children())
    ordered = [n for n in order if n in block_names]
    index = {n: i for i, n in enumerate(ordered)}
    depths = []
    for name in names:
        owners = [b for b in ordered if name == b or name.startswith(b + ".")]
        if not owners:
            raise ValueError(f"{name} is in none of the blocks {ordered}")
        depths.append(index[max(owners, key=len)])
    return depths, len(ordered)
