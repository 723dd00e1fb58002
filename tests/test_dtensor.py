"""DTensor inputs under torchrun (gloo, CPU, 2 and 4 processes): each supported member of the
family gives, for every placement, the full tensor and gradient that one process gives on the
full tensor, bit for bit; the other members refuse a DTensor clearly (tests/dtensor_worker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import _PORT_TROUBLE, free_port

ROOT = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def run_worker(nproc: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            str(ROOT / "dtensor_worker.py"), "--out", str(out),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        text = (done.stdout + done.stderr).lower()
        if done.returncode == 0 or not any(sign in text for sign in _PORT_TROUBLE):
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("nproc", [2, 4])
def test_dtensor_masks_are_slices_of_the_one_process_mask(tmp_path, nproc):
    results = run_worker(nproc, tmp_path / "r.pt")
    assert len(results) > 40
    failed = {k: v for k, v in results.items() if v != "ok"}
    assert not failed, failed
