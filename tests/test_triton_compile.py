"""Every Triton kernel compiles for an A100 (sm_80) and an H100 (sm_90) without a GPU, with the
specializations its launches use: frontend, MLIR passes, ptxas.

The interpreter tests check the arithmetic but not what only the compiler enforces (constexpr
globals, layouts, types). Here the launch wrappers themselves run once under TRITON_INTERPRET=1 on
CPU tensors (dropout in every dtype and mask storage, the shared-mask, alpha and DropBlock kernels,
normals and Gaussian noise, the fused dropout-add-norm forward and backward, attention forward and
backward, causal or masked), each launch is recorded (arguments, constexprs, num_warps), and a
second process compiles every distinct launch with triton's own specialization rules (16-byte
aligned pointers, integers divisible by 16) for both targets. Compiling needs no device, only
triton's bundled toolchain.

By default one launch per kernel and data type family is compiled (a representative set that
keeps the test near a minute on two cores); ``DROPKIT_TRITON_COMPILE_ALL=1`` compiles every
recorded launch (``benchmarks/gpu.py`` runs it so).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# find_spec, not import: importing triton here would spoil TRITON_INTERPRET for test_triton.py.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install dropkit[gpu])", allow_module_level=True)

RECORD = r"""
import json, sys
import torch
import triton.runtime.interpreter as interp
launches = []
original = interp.InterpretedFunction.run

def encode(v):
    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype).removeprefix("torch."), "aligned": v.data_ptr() % 16 == 0}
    if hasattr(v, "value") and type(v).__name__ == "constexpr":
        v = v.value
    if isinstance(v, torch.dtype) or type(v).__name__ == "dtype":
        return {"tl_dtype": str(v)}
    return v

def run(self, *args, grid, warmup, **kwargs):
    launches.append({"module": self.fn.__module__, "kernel": self.fn.__name__,
                     "args": [encode(a) for a in args], "kwargs": {k: encode(v) for k, v in kwargs.items()}})
    return original(self, *args, grid=grid, warmup=warmup, **kwargs)

interp.InterpretedFunction.run = run
import dropkit.backends.triton as tb
import dropkit.backends.triton_bcast as tbc
import dropkit.backends.triton_attention as ta
import dropkit.backends.triton_norm as tn
from dropkit.rng import keep_threshold

t = keep_threshold(0.3)
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    x = torch.randn(1000).to(dtype)
    for storage in ("bits", "bool", "seed"):
        y, saved = tb.dropout_forward(x, 3, 1, t, 1 / 0.7, storage)
        tb.dropout_backward(x, saved, 3, 1, t, 1 / 0.7, storage)
    x = torch.randn(4, 3, 8, 8).to(dtype)
    y, saved = tbc.bcast_dropout_forward(x, (4, 3, 1, 1), 3, 1, t, 1 / 0.7, "bits")
    tbc.bcast_dropout_backward(x, saved, (4, 3, 1, 1), 3, 1, t, 1 / 0.7, "bits")
    y, saved = tbc.alpha_forward(x, (4, 3, 8, 8), 3, 1, t, 1.2, 0.1, -0.5, "seed")
    tbc.alpha_backward(x, saved, (4, 3, 8, 8), 3, 1, t, 1.2, "seed")
    y, saved, scale = tbc.dropblock_forward(x, (3, 3), 3, 1, keep_threshold(0.05), False, "bits")
    tbc.dropblock_backward(x, saved, (3, 3), 3, 1, keep_threshold(0.05), False, scale, "bits")
    x3 = torch.randn(2, 2, 4, 5, 6).to(dtype)
    y, saved, scale = tbc.dropblock_forward(x3, (2, 2, 2), 3, 1, keep_threshold(0.05), True, "seed")
    tb.normal(300, 3, 1, dtype, "cpu")
    for additive in (False, True):
        tb.gaussian_apply(torch.randn(300).to(dtype), 3, 1, 0.5, additive)
tb.keep_mask(300, 3, 1, t, "cpu")
for dtype in (torch.float32, torch.bfloat16):
    for n, rms, save_bits in ((64, False, True), (30, True, False)):
        x, r = torch.randn(4, n, dtype=dtype, requires_grad=True), torch.randn(4, n, dtype=dtype)
        w, b = torch.ones(n, dtype=dtype, requires_grad=True), torch.zeros(n, dtype=dtype, requires_grad=True)
        seed, offset = torch.tensor(3), torch.tensor(1)  # the position is read from memory
        y, h = tn.FusedDropoutAddNorm.apply(x, r, w, b, seed, offset, t, 1 / 0.7, True, rms, 1e-5, save_bits)
        (y.float().sum() + h.float().sum()).backward()
for dtype in (torch.bfloat16, torch.float16):
    for causal, masked in ((False, False), (True, False), (False, True)):
        q, k, v = (torch.randn(1, 2, 32, 16).to(dtype).requires_grad_() for _ in range(3))
        mask = torch.zeros(1, 1, 32, 32, dtype=dtype) if masked else None
        out = ta.attention(q, k, v, mask, causal, 0.25, t, 1 / 0.7, 3, 1)
        out.float().sum().backward()
unique = {json.dumps(l, sort_keys=True): l for l in launches}
json.dump(list(unique.values()), open(sys.argv[1], "w"))
"""

COMPILE = r"""
import importlib, json, sys, time
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

launches = json.load(open(sys.argv[1]))
every = sys.argv[2] == "1"

def decode(v):
    if isinstance(v, dict) and "tensor" in v:
        t = torch.empty(64, dtype=getattr(torch, v["tensor"]))
        return t if v["aligned"] else t[1:]
    if isinstance(v, dict) and "tl_dtype" in v:
        return tl.dtype(v["tl_dtype"])
    return v

def family(l):  # one launch per kernel and data type family in the default run
    dtypes = sorted({a["tensor"] for a in l["args"] if isinstance(a, dict) and "tensor" in a})
    half = any(d in ("bfloat16", "float16") for d in dtypes)
    return l["module"], l["kernel"], half

chosen, seen = [], set()
for l in launches:
    if every or family(l) not in seen:
        seen.add(family(l))
        chosen.append(l)
start = time.perf_counter()
kernels = set()
for cc in (80, 90):
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    for l in chosen:
        fn = getattr(importlib.import_module(l["module"]), l["kernel"])
        args = [decode(a) for a in l["args"]]
        kwargs = {k: decode(v) for k, v in l["kwargs"].items()}
        kwargs.setdefault("enable_fp_fusion", False)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
        src = ASTSource(fn, signature, constexprs, attrs)
        k = triton.compile(src, target=target, options=options.__dict__)
        ptx = k.asm["ptx"]
        assert f".target sm_{cc}" in ptx, ptx[:400]
        kernels.add(l["kernel"])
print(json.dumps({"kernels": sorted(kernels), "launches": len(launches), "compiled": 2 * len(chosen),
                  "seconds": time.perf_counter() - start}))
"""

KERNELS = {"_dropout_kernel", "_bcast_apply_kernel", "_normal_kernel", "_gaussian_kernel", "_fwd_kernel",
           "_bwd_kernel", "_forward_kernel", "_backward_kv_kernel", "_backward_q_kernel"}


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    record = tmp_path / "launches.json"
    out = subprocess.run([sys.executable, "-c", RECORD, str(record)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    launches = json.loads(record.read_text())
    assert {launch["kernel"] for launch in launches} == KERNELS
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    every = os.environ.get("DROPKIT_TRITON_COMPILE_ALL") == "1"
    out = subprocess.run([sys.executable, "-c", COMPILE, str(record), "1" if every else "0"],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode and "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("triton's bundled ptxas is not available on this platform")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["kernels"]) == KERNELS
    if every:
        assert result["compiled"] == 2 * len(launches)
