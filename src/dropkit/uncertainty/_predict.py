"""T stochastic forward passes with dropout on: one large batched pass or a loop of T."""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from dropkit import _torch
from dropkit.layers import DropConnect, DropPath, EmbeddingDropout, LayerDrop, StreamModule
from dropkit.rng import check_seed
from dropkit.uncertainty._streams import StreamOverride
from dropkit.uncertainty._switch import TORCH_DROPOUT_TYPES, is_dropout_module, mc_dropout

__all__ = ["mc_predict", "mc_probs"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


@contextlib.contextmanager
def _torch_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators inside the block and give the caller's RNG state back after."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda"
    ) else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2**63)
        yield


OutputSelector = str | int | Callable[[object], torch.Tensor] | None


def _check_selector(output: object) -> OutputSelector:
    if output is None or callable(output) or isinstance(output, str):
        return output  # type: ignore[return-value]
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise TypeError(
        f"output must be None, a key or attribute name, an int index or a callable, got {output!r}"
    )


def _select(out: object, output: OutputSelector) -> object:
    """The tensor ``output`` names in a model's output (a ModelOutput, dict, tuple or tensor)."""
    if output is None:
        return out
    if callable(output):
        return output(out)
    if isinstance(output, int):
        if hasattr(out, "to_tuple"):  # a Hugging Face ModelOutput indexes like its tuple
            out = out.to_tuple()
        if not isinstance(out, (tuple, list)):
            raise TypeError(f"output={output!r} indexes a tuple, but the model returned {type(out).__name__}")
        return out[output]
    if isinstance(out, Mapping) and output in out:
        return out[output]
    if hasattr(out, output):
        return getattr(out, output)
    keys = f" (keys: {list(out)})" if isinstance(out, Mapping) else ""
    kind = type(out).__name__
    raise ValueError(f"output={output!r} is neither a key nor an attribute of the model's {kind}{keys}")


def _check_output(out: object, rows: int, output: OutputSelector = None) -> torch.Tensor:
    out = _select(out, output)
    if not isinstance(out, torch.Tensor):
        hint = "pass output= a key or attribute name (output='logits'), an index or a callable that picks it"
        if output is not None:
            hint = f"output={output!r} selected a {type(out).__name__}; it must select a tensor"
        raise TypeError(f"mc_predict needs a tensor from the model, got {type(out).__name__}: {hint}")
    if out.dim() == 0 or out.shape[0] != rows:
        raise ValueError(f"the model's output {tuple(out.shape)} does not have the {rows} input rows first")
    return out


def _forward_rows(
    model: nn.Module, x: torch.Tensor, start: int, stop: int, output: OutputSelector = None
) -> torch.Tensor:
    """The model on rows ``start..stop-1`` of ``x`` repeated along dim 0 (row ``r`` is ``x[r % N]``)."""
    n = x.shape[0]
    pieces = []
    row = start
    while row < stop:
        first = row % n
        if first == 0 and stop - row >= 2 * n:
            # Whole copies in one go (an expand is a view; reshape makes the one copy needed).
            k = (stop - row) // n
            pieces.append(x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:]))
            row += k * n
        else:
            take = min(n - first, stop - row)
            pieces.append(x[first : first + take])
            row += take
    chunk = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return _check_output(model(chunk), stop - start, output)


def _mask_spans_batch(module: StreamModule) -> bool:
    """Whether one call of ``module`` draws a mask that every row of its batch shares."""
    if isinstance(module, (DropConnect, EmbeddingDropout, LayerDrop)):
        return True
    if isinstance(module, DropPath) and module.mode == "batch":
        return True
    return 0 in getattr(module, "shared_dims", ())


def _warn_train_mode_norms(model: nn.Module) -> None:
    norms = [
        name
        for name, m in model.named_modules()
        if isinstance(m, _torch.BATCH_NORM_TYPES) and m.training and m.track_running_stats
    ]
    if norms:
        warnings.warn(
            "mc_predict: these normalization layers are in training mode, so they normalize with "
            f"the prediction batch and update their running statistics; call model.eval() first: {norms}",
            UserWarning,
            stacklevel=3,
        )


def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 30,
    *,
    batched: bool = True,
    max_batch: int | None = None,
    seed: int | None = None,
    consistent: bool = False,
    output: OutputSelector = None,
) -> torch.Tensor:
    r"""``samples`` stochastic forward passes with only dropout on (MC dropout), stacked.

    Output ``t`` is ``f(x; \hat W_t)`` with ``\hat W_t`` the weights under the ``t``-th dropout
    mask (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016); averaging over
    ``t`` approximates the predictive distribution. The model is switched with
    :func:`mc_dropout` (BatchNorm and every other module keep their mode; all flags are put back
    after) and run under ``torch.no_grad()``.

    * ``batched=True``: ``x`` is repeated ``samples`` times along dim 0 and the ``samples * N``
      rows go through the model in chunks of at most ``max_batch`` rows (all at once if None):
      few large passes instead of ``samples`` small ones. Every row gets its own masks, so the
      passes are independent exactly as in the loop. A model with a layer whose mask is shared
      by the whole batch (DropConnect, WeightDrop, EmbeddingDropout, DropPath with
      ``mode="batch"``, ``shared_dims`` containing 0) would give the ``samples`` replicas one
      mask; such a model runs the loop instead, with a warning naming the layers.
    * ``batched=False``: a Python loop of ``samples`` passes over ``x`` (chunked likewise).
    * ``seed=s``: reproducible. torch's generators are seeded with ``s`` inside the call (for
      torch.nn dropout and unseeded dropkit layers; the caller's RNG state is restored after)
      and each dropkit layer runs on a stream derived from ``(s, layer name)``; a seeded layer's
      own stream is put back untouched.
    * ``consistent=True`` (needs ``seed``): the same ``samples`` masks for every input, in every
      batch and every call with the same seed (BatchBALD, Kirsch et al. 2019). Pass ``t`` gives
      each dropkit layer the stream ``(derive_seed(s, "consistent", t, layer name), 0)`` and adds
      the batch dimension to its ``shared_dims`` (DropPath: ``mode="batch"``), so one mask per
      pass is shared by all inputs; DropConnect, WeightDrop and EmbeddingDropout drop weights,
      which is the same for all inputs already. Layers with a mask entry per sample (channel,
      alpha, Gaussian, Concrete, locked dropout, DropBlock) are refused.
      This always loops over the passes (each over the whole chunked batch), whatever
      ``batched`` says. torch.nn dropout modules have no such stream: they are refused.

    Args:
        model: a model whose dropout-family modules :func:`mc_dropout` can switch on; usually in
            eval mode (a warning names BatchNorm layers left in training mode).
        x: the inputs, batch first.
        samples: number of stochastic passes ``T`` (>= 1).
        batched: one large replicated batch (True) or a loop of ``T`` passes (False).
        max_batch: the most rows a single forward pass may hold (None: no limit).
        seed: base seed in [0, 2**64) for reproducible masks.
        consistent: share each pass's masks across inputs and calls.
        output: which tensor of the model's output to stack, for models that return a Hugging
            Face ``ModelOutput``, a dict or a tuple: a key or attribute name (``"logits"``), an
            int index, or a callable ``output(model_output) -> tensor``. None: the model
            returns a tensor.

    Returns:
        The stacked outputs, detached.

    Shape:
        x: ``(N, *)``. Output: ``(T, N, *out)`` where the model maps ``(N, *)`` to ``(N, *out)``.

    Example:
        >>> from dropkit.layers import Dropout
        >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), Dropout(0.5), nn.Linear(128, 10)).eval()
        >>> out = mc_predict(model, torch.randn(8, 64), samples=20, seed=0)
        >>> out.shape, model.training, model[2].training
        (torch.Size([20, 8, 10]), False, False)
        >>> x = torch.randn(8, 64)
        >>> torch.equal(mc_predict(model, x, seed=1), mc_predict(model, x, seed=1))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have at least one row along dim 0, got shape {tuple(x.shape)}")
    samples = _positive_int("samples", samples)
    output = _check_selector(output)
    max_batch = None if max_batch is None else _positive_int("max_batch", max_batch)
    seed = None if seed is None else check_seed(seed)
    if not isinstance(batched, bool) or not isinstance(consistent, bool):
        raise TypeError(f"batched and consistent must be bools, got {batched!r} and {consistent!r}")
    streams = {n: m for n, m in model.named_modules() if isinstance(m, StreamModule) and is_dropout_module(m)}
    if consistent:
        if seed is None:
            raise ValueError("consistent=True needs an explicit seed (the masks are a function of it)")
        torch_dropout = [
            n for n, m in model.named_modules()
            if isinstance(m, TORCH_DROPOUT_TYPES) and not isinstance(m, StreamModule)
        ]
        if torch_dropout:
            raise ValueError(
                "consistent=True needs dropkit layers (their masks come from a seeded stream); "
                f"replace these torch.nn dropout modules: {torch_dropout}"
            )
    _warn_train_mode_norms(model)
    spanning = [name for name, m in streams.items() if _mask_spans_batch(m)]
    if batched and not consistent and spanning:
        warnings.warn(
            "mc_predict: these layers draw one mask for a whole batch, so replicating the inputs "
            f"would repeat one pass; running {samples} passes in a loop instead: {spanning}",
            UserWarning,
            stacklevel=2,
        )
        batched = False
    n = x.shape[0]
    chunk = max_batch or (n if consistent or not batched else samples * n)
    override = StreamOverride(streams, share_batch=consistent) if seed is not None else None
    try:
        with torch.no_grad(), _torch_rng(seed, x.device), mc_dropout(model):
            if override is not None and not consistent:
                override.set_streams(seed, "mc_predict")
            if consistent:
                passes = []
                for t in range(samples):
                    outs = []
                    for start in range(0, n, chunk):
                        # Every chunk restarts the pass's streams: masks depend on t, not on the chunk.
                        override.set_streams(seed, "consistent", t)
                        override.rows = min(start + chunk, n) - start
                        outs.append(_forward_rows(model, x, start, start + override.rows, output))
                    passes.append(torch.cat(outs))
                return torch.stack(passes)
            rows = samples * n if batched else n
            repeats = 1 if batched else samples
            outs = [
                _forward_rows(model, x, start, min(start + chunk, rows), output)
                for _ in range(repeats)
                for start in range(0, rows, chunk)
            ]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            return out.view(samples, n, *out.shape[1:])
    finally:
        if override is not None:
            override.restore()


def mc_probs(model: nn.Module, x: torch.Tensor, samples: int = 30, **kwargs: object) -> torch.Tensor:
    r"""Class probabilities of each MC dropout pass: ``softmax(mc_predict(model, x, ...), dim=-1)``.

    The softmax is taken per pass, before any averaging: the MC predictive distribution is
    ``p(y | x) \approx \frac1T \sum_t softmax(f(x; \hat W_t))``, and averaging logits first gives
    a different, overconfident distribution. Computed in float32 at least. ``kwargs`` are those
    of :func:`mc_predict`.

    Shape:
        x: ``(N, *)``; the model gives logits ``(N, C)``. Output: ``(T, N, C)``, summing to 1 over C.

    Example:
        >>> from dropkit.layers import Dropout
        >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), Dropout(0.5), nn.Linear(128, 10)).eval()
        >>> probs = mc_probs(model, torch.randn(4, 64), samples=5, seed=0)
        >>> probs.shape, bool(torch.allclose(probs.sum(-1), torch.ones(5, 4)))
        (torch.Size([5, 4, 10]), True)
    """
    logits = mc_predict(model, x, samples, **kwargs)  # type: ignore[arg-type]
    if logits.dim() != 3:
        shape = tuple(logits.shape[1:])
        raise ValueError(f"mc_probs needs a model giving logits (N, C), got per-pass output {shape}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.softmax(logits.to(dtype), dim=-1)
