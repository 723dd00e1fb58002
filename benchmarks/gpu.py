"""dropkit's Triton kernels against PyTorch on the GPU at hand, measured side by side in one run.

Prints, with the device name:
  * dropout forward and forward+backward for 2**24 and 2**28 elements in bf16 and fp32:
    dropkit vs ``torch.nn.functional.dropout``, and effective GB/s vs a device copy of the same
    tensor (``y.copy_(x)``: the bandwidth floor for a read-once, write-once kernel);
  * the fused ``dropout_add_norm`` at 8192 x 4096 bf16 vs torch eager (dropout, add,
    layer_norm) and vs ``torch.compile`` of the same three ops, forward and forward+backward;
  * bytes saved for backward per element, counted with torch.autograd.graph.saved_tensors_hooks;
  * attention with dropout (16 x 16 heads x 1024 x 1024, head dim 64, bf16/fp16, full and causal):
    dropkit's Triton flash kernel vs torch's SDPA with the same dropout_p, fwd and fwd+bwd;
  * where an eager dropout call's time goes (fp32 and bf16, 2^24 elements): host time per call,
    device time per call inside a CUDA graph, dropkit and torch; the JSON also keeps the 15
    functions with the most own time in a cProfile of 200 dropkit calls.

Before the table it runs the GPU test subset: tests/test_cuda.py (every member of the family
and every kernel path on the device, bit for bit against the reference backend on the CPU; no
host synchronisation in a training step; torch.compile; a patched Hugging Face model), the CUDA
graph test of tests/test_core_v2.py, and every recorded kernel launch compiled for sm_80 and
sm_90 (``DROPKIT_TRITON_COMPILE_ALL=1``); ``--no-tests`` skips them. Dropout rows also time
``torch.compile`` of ``F.dropout`` (not with ``--quick``).

Times are GPU medians from ``triton.testing.do_bench`` (which flushes L2 between runs). Needs
only torch, triton and dropkit (pytest for the tests). Without a CUDA device or triton it says
so and exits with status 0, measuring nothing. ``--json PATH`` writes the rows and the tests'
outcome. Run: ``python benchmarks/gpu.py [--quick] [--no-tests] [--json PATH]`` (under 5 minutes
on an H100).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import dropkit
from dropkit.functional import dropout_add_norm
from dropkit.ops import backend_name

P = 0.1
SEED = 1234
DEVICE = "cuda"


def saved_bytes_per_element(fn: Callable[[], object], numel: int) -> float:
    """Bytes that autograd keeps for backward while ``fn`` runs, per element of the input.

    Tensors are counted once per storage, and inputs the caller holds anyway (leaves that
    require grad, parameters) are skipped, so the figure is the extra memory of the op.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / numel


def ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=60))


ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = ["tests/test_cuda.py", "tests/test_core_v2.py", "tests/test_triton_compile.py"]


def run_gpu_tests(timeout_s: float) -> dict:
    """The GPU test subset in a subprocess: its exit status, pytest's last line and the report
    of every failure (the end of pytest's output)."""
    env = dict(os.environ, DROPKIT_TRITON_COMPILE_ALL="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-k",
           "not test_core_v2 or cuda", *GPU_TESTS]
    try:
        import xdist  # noqa: F401

        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout.decode(errors="replace")[-20000:] if isinstance(exc.stdout, bytes) else ""
        return {"returncode": None, "summary": f"timed out after {timeout_s:.0f} s", "output": tail}
    lines = out.stdout.strip().splitlines()
    return {"returncode": out.returncode, "summary": lines[-1] if lines else out.stderr[-500:],
            "output": out.stdout[-20000:] + out.stderr[-3000:]}


def dropout_rows(n: int, dtype: torch.dtype, compile_too: bool = False) -> list[tuple[str, str]]:
    x = torch.randn(n, device=DEVICE, dtype=dtype)
    xg = x.detach().requires_grad_()
    g = torch.randn_like(x)
    y = torch.empty_like(x)
    size = x.element_size()
    copy = ms(lambda: y.copy_(x))
    copy_gbs = 2 * n * size / copy / 1e6

    def ours_fwd(storage: str, seed: int | torch.Tensor = SEED) -> Callable[[], object]:
        return lambda: dropkit.dropout(xg, P, seed=seed, mask_storage=storage)

    def ours_fwd_bwd(storage: str) -> Callable[[], object]:
        return lambda: torch.autograd.grad(dropkit.dropout(xg, P, seed=SEED, mask_storage=storage), xg, g)

    torch_fwd = ms(lambda: F.dropout(xg, P))
    torch_fb = ms(lambda: torch.autograd.grad(F.dropout(xg, P), xg, g))
    name = f"2^{n.bit_length() - 1} {str(dtype).removeprefix('torch.')}"
    rows = [(f"{name} copy", f"{copy:8.3f} ms  {copy_gbs:7.0f} GB/s (floor)")]
    for storage in ("bits", "seed"):
        fwd = ms(ours_fwd(storage))
        # Bytes moved: read x, write y, plus the packed mask for "bits".
        moved = 2 * n * size + (n / 8 if storage == "bits" else 0)
        fb = ms(ours_fwd_bwd(storage))
        gbs = moved / fwd / 1e6
        rows.append((
            f"{name} fwd [{storage}]",
            f"{fwd:8.3f} ms  {gbs:7.0f} GB/s = {gbs / copy_gbs:5.2f} of copy"
            f"  torch/dropkit {torch_fwd / fwd:5.2f}x",
        ))
        rows.append((f"{name} fwd+bwd [{storage}]", f"{fb:8.3f} ms  torch/dropkit {torch_fb / fb:5.2f}x"))
    # A seed already on the device (as a layer's stream keeps it): the kernel without the position's fill.
    resident = ms(ours_fwd("bits", torch.tensor(SEED, device=DEVICE)))
    rows.append((f"{name} fwd [bits, device seed]",
                 f"{resident:8.3f} ms  torch/dropkit {torch_fwd / resident:5.2f}x"))
    rows.append((f"{name} torch F.dropout", f"fwd {torch_fwd:8.3f} ms  fwd+bwd {torch_fb:8.3f} ms"))
    if compile_too:
        compiled = torch.compile(lambda v: F.dropout(v, P))
        c_fwd = ms(lambda: compiled(xg))
        c_fb = ms(lambda: torch.autograd.grad(compiled(xg), xg, g))
        rows.append((f"{name} torch.compile F.dropout", f"fwd {c_fwd:8.3f} ms  fwd+bwd {c_fb:8.3f} ms"))
    for storage in ("bits", "seed", "bool"):
        b = saved_bytes_per_element(ours_fwd(storage), n)
        rows.append((f"{name} saved B/elem [{storage}]", f"{b:.4f}"))
    b = saved_bytes_per_element(lambda: F.dropout(xg, P), n)
    rows.append((f"{name} saved B/elem [torch]", f"{b:.4f}"))
    return rows


def host_rows(n: int, dtype: torch.dtype) -> tuple[list[tuple[str, str]], list[str]]:
    """Where an eager call's time goes: host time per call (200 calls queued without waiting),
    the device time per call of 20 calls recorded in one CUDA graph (no host work), for dropkit
    (seed and offset already on the device) and torch; and the 15 functions with the most own
    time in a cProfile of 200 dropkit calls."""
    import cProfile
    import io
    import pstats

    x = torch.randn(n, device=DEVICE, dtype=dtype)
    seed, offset = torch.tensor(SEED, device=DEVICE), torch.tensor(0, device=DEVICE)
    cases = {"dropkit": lambda: dropkit.dropout(x, P, seed=seed, offset=offset),
             "torch": lambda: F.dropout(x, P)}
    name = f"2^{n.bit_length() - 1} {str(dtype).removeprefix('torch.')}"
    rows = []
    for label, fn in cases.items():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - start) / 200 * 1e3
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(20):
                fn()
        graph.replay()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(10):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        rows.append((f"{name} fwd {label}: host / graph", f"{host:8.4f} ms host per call, "
                     f"{begin.elapsed_time(end) / 200:8.4f} ms device per call in a graph"))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        cases["dropkit"]()
    profile.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    return rows, text.getvalue().splitlines()


def fused_rows(m: int, c: int, compile_too: bool) -> list[tuple[str, str]]:
    dtype = torch.bfloat16
    x = torch.randn(m, c, device=DEVICE, dtype=dtype, requires_grad=True)
    r = torch.randn(m, c, device=DEVICE, dtype=dtype, requires_grad=True)
    w = torch.randn(c, device=DEVICE, dtype=dtype, requires_grad=True)
    b = torch.randn(c, device=DEVICE, dtype=dtype, requires_grad=True)
    gy = torch.randn_like(x)

    def eager(x, r, w, b):
        return F.layer_norm(F.dropout(x, P) + r, (c,), w, b)

    def ours(x, r, w, b):
        return dropout_add_norm(x, r, w, b, p=P, seed=SEED)

    cases = {"dropkit fused": ours, "torch eager": eager}
    if compile_too:
        cases["torch.compile"] = torch.compile(eager)
    fwd, fb = {}, {}
    for name, fn in cases.items():
        with torch.no_grad():
            fwd[name] = ms(lambda fn=fn: fn(x, r, w, b))
        fb[name] = ms(lambda fn=fn: torch.autograd.grad(fn(x, r, w, b), (x, r, w, b), gy))
    rows = []
    label = f"{m}x{c} bf16"
    for name in cases:
        rows.append((
            f"{label} {name}",
            f"fwd {fwd[name]:8.3f} ms ({fwd[name] / fwd['dropkit fused']:5.2f}x dropkit)"
            f"  fwd+bwd {fb[name]:8.3f} ms ({fb[name] / fb['dropkit fused']:5.2f}x dropkit)",
        ))
    for name, fn in (("dropkit fused", ours), ("torch eager", eager)):
        saved = saved_bytes_per_element(lambda fn=fn: fn(x, r, w, b), m * c)
        rows.append((f"{label} saved B/elem [{name}]", f"{saved:.4f}"))
    return rows


def attention_rows(dtype: torch.dtype, causal: bool) -> list[tuple[str, str]]:
    """Attention with dropout (batch 16, 16 heads, L = S = 1024, head dim 64): dropkit's Triton
    flash kernel vs torch's SDPA with the same dropout_p, forward and forward+backward."""
    shape = (16, 16, 1024, 64)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=DEVICE, dtype=dtype)
    cases = {
        "dropkit": lambda: dropkit.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=P, is_causal=causal, seed=SEED
        ),
        "torch": lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=P, is_causal=causal),
    }
    tag = f"attention {str(dtype).removeprefix('torch.')} {'causal' if causal else 'full'}"
    times = {}
    for name, fn in cases.items():
        times[(name, "fwd")] = ms(fn)
        times[(name, "fwd+bwd")] = ms(lambda fn=fn: fn().backward(grad))
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        ours, theirs = times[("dropkit", mode)], times[("torch", mode)]
        text = f"dropkit {ours:.3f} ms  torch {theirs:.3f} ms  ratio {ours / theirs:.2f}x"
        rows.append((f"{tag} {mode}", text))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2**24 elements only, no torch.compile")
    parser.add_argument("--no-tests", action="store_true", help="skip the GPU test subset")
    parser.add_argument("--json", default=None, help="write the rows and the tests' outcome to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device; none is visible to torch here. Nothing measured.")
        return 0
    try:
        import triton
    except ImportError:
        print("benchmarks/gpu.py needs triton (pip install 'dropkit[gpu]'). Nothing measured.")
        return 0
    if backend_name("cuda") != "triton":
        print("dropkit's Triton backend did not load (see the warning above). Nothing measured.")
        return 0
    start = time.perf_counter()
    tests = None if args.no_tests else run_gpu_tests(200)
    if tests is not None:
        print(f"GPU tests: {tests['summary']} (exit status {tests['returncode']})")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"dropout p={P}; times are GPU medians (triton.testing.do_bench)")
    sizes = (2**24,) if args.quick else (2**24, 2**28)
    rows = []
    for n in sizes:
        for dtype in (torch.bfloat16, torch.float32):
            rows += dropout_rows(n, dtype, compile_too=not args.quick and n == sizes[0])
            torch.cuda.empty_cache()
    profiles = {}
    for dtype in (torch.float32, torch.bfloat16):
        try:
            host, profiles[str(dtype)] = host_rows(2**24, dtype)
        except Exception as exc:  # a probe that fails must not cost the rest of the table
            host = [(f"host probe {dtype}", f"failed: {exc!r}")]
        rows += host
    rows += fused_rows(8192, 4096, compile_too=not args.quick)
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (False, True):
            rows += attention_rows(dtype, causal)
            torch.cuda.empty_cache()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "triton": triton.__version__, "tests": tests, "rows": dict(rows),
                  "host_profiles": profiles, "seconds": time.perf_counter() - start}
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if tests is None or tests["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
