"""The Triton kernels compile for an H100 (sm_90) without a GPU: frontend, MLIR passes, ptxas.

The interpreter tests check the arithmetic but not what only the compiler enforces (constexpr
globals, layouts, types). Compiling needs no device, only triton's bundled toolchain; it runs
in a subprocess because the interpreter tests set TRITON_INTERPRET=1 in this process.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

# find_spec, not import: importing triton here would spoil TRITON_INTERPRET for test_triton.py.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install dropkit[gpu])", allow_module_level=True)

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import dropkit.backends.triton as tb
import dropkit.backends.triton_norm as tn

def compile_(fn, sig, consts, warps):
    sig = dict(sig, **{k: "constexpr" for k in consts})
    names = list(sig)
    # As triton specializes a launch with 16-aligned tensors and sizes divisible by 16.
    aligned = [n for n in names if sig[n].startswith("*") or n in ("n", "N")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps, "enable_fp_fusion": False})
    return k.asm["ptx"]

stream = {"seed_ptr": "*i64", "off_ptr": "*i64", "thr": "i64"}  # the position is read from memory
sig = dict({"x_ptr": "*bf16", "y_ptr": "*bf16", "mask_in_ptr": "*u8", "mask_out_ptr": "*u8",
            "scale_ptr": "*fp32", "n": "i32"}, **stream)
ptx = compile_(tb._dropout_kernel, sig, {"SOURCE": 0, "SAVE": 1, "WRITE_Y": True, "BLOCK": tb.BLOCK}, 4)
# The Philox products are hardware 32x32 high multiplies, and bf16 moves 16 bytes per access.
assert "mul.hi.u32" in ptx and "ld.global.v4.b32" in ptx
sig["x_ptr"] = sig["y_ptr"] = sig["scale_ptr"] = "*fp64"
compile_(tb._dropout_kernel, sig, {"SOURCE": 1, "SAVE": 0, "WRITE_Y": True, "BLOCK": tb.BLOCK}, 4)
for aligned, rms in ((True, False), (False, True)):
    sig = dict({n: "*bf16" for n in ("x_ptr", "r_ptr", "w_ptr", "b_ptr", "y_ptr", "h_ptr")},
               bits_ptr="*u8", mean_ptr="*fp32", rstd_ptr="*fp32", scale_ptr="*fp32", N="i32", eps="fp32",
               **stream)
    compile_(tn._fwd_kernel, sig, {"DROPOUT": True, "SAVE_BITS": True, "HAS_BIAS": True, "RMS": rms,
                                   "ALIGNED": aligned, "BLOCK_N": 1024}, 4)
    sig = dict({n: "*bf16" for n in ("dy_ptr", "dh_ptr", "h_ptr", "w_ptr", "dx_ptr", "dr_ptr")},
               mean_ptr="*fp32", rstd_ptr="*fp32", bits_ptr="*u8", scale_ptr="*fp32", dw_ptr="*fp32",
               db_ptr="*fp32", M="i32", N="i32", **stream)
    compile_(tn._bwd_kernel, sig, {"DROPOUT": True, "FROM_BITS": aligned, "HAS_DH": True, "RMS": rms,
                                   "ALIGNED": aligned, "BLOCK_N": 1024}, 4)
print("compiled")
"""


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode and "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("triton's bundled ptxas is not available on this platform")
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
