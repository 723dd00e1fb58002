"""The CPU dropout benchmark behind ``dropkit bench`` and benchmarks/cpu_dropout.py.

For each size N and dtype it times, side by side in one process (the cases take turns, after
a warm-up): dropkit's forward, forward+backward with ``mask_storage="bits"`` and ``"seed"``,
torch's eager ``F.dropout`` (forward and forward+backward), ``torch.compile``'d ``F.dropout``
(forward) and ``x.clone()``, the memory floor: one read and one write of the tensor. It also
measures the bytes each saves for backward, with ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import dropkit
from dropkit.app.errors import Parser
from dropkit.ops import backend_name

__all__ = ["run", "main", "DEFAULT_SIZES"]

DEFAULT_SIZES = (2**12, 2**16, 2**20, 2**24)
P = 0.1
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def _saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    leaf = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(leaf)
    return sum(sizes)


_Case = tuple[Callable[[], object], Callable | None]


def _cases(x: torch.Tensor, compiled: Callable | None) -> dict[str, _Case]:
    """name -> (the timed call, the function whose saved bytes are measured, or None)."""
    leaf = x.detach().requires_grad_(True)
    grad = torch.ones_like(x)

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def call() -> None:
            leaf.grad = None
            fn(leaf).backward(grad)

        return call

    def dk(storage: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: dropkit.dropout(t, P, seed=1234, offset=0, mask_storage=storage)

    def eager(t: torch.Tensor) -> torch.Tensor:
        return F.dropout(t, P, training=True)

    cases = {
        "clone": (x.clone, None),
        "dropkit fwd": (lambda: dk("seed")(x), None),
        "dropkit fwd+bwd bits": (fwd_bwd(dk("bits")), dk("bits")),
        "dropkit fwd+bwd seed": (fwd_bwd(dk("seed")), dk("seed")),
        "torch fwd": (lambda: eager(x), None),
        "torch fwd+bwd": (fwd_bwd(eager), eager),
    }
    if compiled is not None:
        cases["torch.compile fwd"] = (lambda: compiled(x), None)
    return cases


def _repeats(n: int, repeat: int | None) -> int:
    if repeat is not None:
        return repeat
    return max(5, min(100, 2**22 // max(n, 1)))


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    repeat: int | None = None,
    compile: bool = True,
    out: Callable[[str], object] = print,
) -> list[dict]:
    """Time dropkit's CPU dropout against torch's and ``x.clone()``; one dict per case.

    Each dict has ``dtype``, ``n``, ``case``, ``ms`` (median), ``vs_torch`` (torch's time for
    the same kind of call, forward or forward+backward, divided by this one: a speed-up),
    ``vs_clone`` (this time over clone's) and ``saved_per_elem`` (bytes saved for backward
    per element, None where not measured). Timings are wall-clock medians with p = 0.1.

    Args:
        sizes: element counts N.
        dtypes: names among float32, bfloat16, float16, float64.
        repeat: timed calls per case (default: more for small N).
        compile: include ``torch.compile(F.dropout)`` (compiles once per size and dtype).
        out: where progress lines go (``print`` by default).

    Shape:
        Inputs are 1-D tensors of N elements.

    Example:
        >>> rows = run(sizes=[256], dtypes=["float32"], repeat=2, compile=False, out=lambda s: None)
        >>> sorted({r["case"] for r in rows})[:2]
        ['clone', 'dropkit fwd']
    """
    for name in dtypes:
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sizes must be positive ints, got {n!r}")
    rows: list[dict] = []
    for name in dtypes:
        for n in sizes:
            x = torch.randn(n).to(_DTYPES[name])
            compiled = None
            if compile:
                compiled = torch.compile(lambda t: F.dropout(t, P, training=True), dynamic=False)
            cases = _cases(x, compiled)
            for call, _ in cases.values():  # warm-up: thread start, page faults, compilation
                for _ in range(2):
                    call()
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(_repeats(n, repeat)):
                for k, (call, _) in cases.items():
                    start = time.perf_counter()
                    call()
                    times[k].append(time.perf_counter() - start)
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            for k, (_, saved_fn) in cases.items():
                ref = ms["torch fwd+bwd"] if "bwd" in k else ms["torch fwd"]
                saved = _saved_bytes(saved_fn, x) / n if saved_fn is not None else None
                row = {"dtype": name, "n": n, "case": k, "ms": ms[k], "vs_torch": ref / ms[k],
                       "vs_clone": ms[k] / ms["clone"], "saved_per_elem": saved}
                rows.append(row)
            out(f"done {name} N={n}")
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a fixed-width text table."""
    lines = [f"{'dtype':<9} {'N':>9}  {'case':<21} {'ms':>10} {'torch/this':>10} {'this/clone':>10} "
             f"{'saved B/elem':>12}"]
    for r in rows:
        saved = "-" if r["saved_per_elem"] is None else f"{r['saved_per_elem']:.4g}"
        lines.append(f"{r['dtype']:<9} {r['n']:>9}  {r['case']:<21} {r['ms']:>10.4f} {r['vs_torch']:>10.2f} "
                     f"{r['vs_clone']:>10.2f} {saved:>12}")
    return "\n".join(lines)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``dropkit bench``): run the benchmark and print its table; returns 0.

    Example:
        >>> args = ["--sizes", "256", "--dtypes", "float32", "--repeat", "1", "--no-compile"]
        >>> main(args)  # doctest: +ELLIPSIS
        dropkit bench: ...
        0
    """
    from dropkit.app.cli import _Help

    parser = Parser(
        prog="dropkit bench", formatter_class=_Help,
        description="Time dropkit's CPU dropout against torch's, side by side in one process: the "
        "forward, forward+backward with mask_storage bits and seed, torch's eager and torch.compile'd "
        "F.dropout and x.clone() (one read and one write, the memory floor), at p = 0.1; and the bytes "
        "each keeps for backward. Prints one table; docs/performance.md records its results.")
    parser.add_argument("--sizes", type=_positive, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                        help="element counts N")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(_DTYPES),
                        metavar="DTYPE", help=f"tensor dtypes, among {', '.join(sorted(_DTYPES))}")
    parser.add_argument("--repeat", type=_positive, default=None,
                        help="timed calls per case (default: from 5 to 100, more for small N)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch.set_num_threads before timing (default: torch's own choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"dropkit bench: backend={backend_name('cpu')} threads={torch.get_num_threads()} p={P} "
          f"torch={torch.__version__}")
    rows = run(args.sizes, args.dtypes, args.repeat, compile=not args.no_compile, out=lambda s: None)
    print(format_table(rows))
    return 0
