"""Every SIMD path of the native kernel against its portable C path, from C (tests/native/isa_check.c).

The x86 paths also run from Python in test_native.py; this harness adds the AArch64 NEON path,
cross-compiled and run under user-mode emulation when the tools are installed
(Debian: ``apt-get install gcc-aarch64-linux-gnu qemu-user``).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(str(p) for p in (ROOT / "src" / "dropkit" / "backends" / "cpu").glob("dk_*.c"))
HARNESS = str(ROOT / "tests" / "native" / "isa_check.c")
FLAGS = ["-O2", "-std=c11", "-ffp-contract=off", "-fno-math-errno"]


def build_and_run(compiler: str, extra: list[str], runner: list[str], tmp_path: Path) -> str:
    exe = tmp_path / "isa_check"
    cmd = [compiler, *FLAGS, *extra, HARNESS, *SOURCES, "-o", str(exe), "-lpthread", "-lm"]
    subprocess.run(cmd, check=True)
    result = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_host_simd_paths_match_portable_path(tmp_path):
    out = build_and_run("cc", [], [], tmp_path)
    assert "mismatch" not in out


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)",
)
def test_neon_path_matches_portable_path(tmp_path):
    out = build_and_run("aarch64-linux-gnu-gcc", ["-static"], ["qemu-aarch64"], tmp_path)
    assert "neon: 300 cases checked" in out
