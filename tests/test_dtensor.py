"""DTensor inputs under torchrun (gloo, CPU, 2 and 4 processes): each supported member of the
family gives, for every placement, the full tensor and gradient that one process gives on the
full tensor, bit for bit; the other members refuse a DTensor clearly (tests/dtensor_worker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import RETRY_SIGNS, free_port

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
        if done.returncode == 0 or not any(sign in text for sign in RETRY_SIGNS):
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("nproc", [2, 4])
def test_dtensor_masks_are_slices_of_the_one_process_mask(tmp_path, nproc):
    results = run_worker(nproc, tmp_path / "r.pt")
    assert len(results) > 40
    failed = {k: v for k, v in results.items() if v != "ok"}
    assert not failed, failed


def run_example(nproc: int, *args: str) -> list[tuple[str, str, float]]:
    """examples/dtensor_tp.py on ``nproc`` processes: (step, masks, loss) of each printed step."""
    example = str(ROOT.parent / "examples" / "dtensor_tp.py")
    for _ in range(3):
        port = str(free_port())
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if nproc == 1:
            env.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            cmd = [sys.executable, example, *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", port, example, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        text = (done.stdout + done.stderr).lower()
        if done.returncode == 0 or not any(sign in text for sign in RETRY_SIGNS):
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("step="):
            step, hidden, out, loss = (field.split("=")[1] for field in line.split())
            rows.append((step, f"{hidden} {out}", float(loss)))
    return rows


FSDP2_ON_CPU = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 6)


@pytest.mark.skipif(not FSDP2_ON_CPU, reason="fully_shard (FSDP2) runs on CPU from torch 2.6 on")
def test_fsdp2_x_tp_recipe_draws_the_one_process_masks_and_resumes_on_another_mesh(tmp_path):
    one = run_example(1)
    assert [r[0] for r in one] == ["0", "1", "2"]
    runs = {
        "FSDP2 x TP, 2 x 2, steps 0-1, saved": (run_example(4, "--dp", "2", "--steps", "2", "--save",
                                                            str(tmp_path / "ck")), one[:2]),
        "TP 2 + sequence parallel, step 2, resumed from the 2 x 2 checkpoint": (
            run_example(2, "--sp", "--steps", "1", "--load", str(tmp_path / "ck")), one[2:]),
        "FSDP2 alone, 2 ranks": (run_example(2, "--dp", "2"), one),
        "FSDP2 x TP 2 x 2 + sequence parallel": (
            run_example(4, "--dp", "2", "--sp", "--steps", "1"), one[:1]),
    }
    for name, (got, want) in runs.items():
        assert [r[:2] for r in got] == [r[:2] for r in want], name  # every mask, exactly
        assert [r[2] for r in got] == pytest.approx([r[2] for r in want], abs=2e-6), name
