"""DataLoader workers forked after the native CPU kernel ran in the parent: they must not hang.

A plain ``os.fork`` after the kernel's OpenMP threads ran leaves the child's OpenMP runtime
waiting for threads that do not exist (as with torch's own parallel ops), so large tensors hang
there; docs/design.md says so. DataLoader workers are safe because torch sets one thread in each
worker, and the kernel runs single-threaded there. The check runs in a subprocess with a timeout,
so a regression fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import dropkit
from dropkit.ops import use_backend

SCRIPT = r"""
import json

import torch
from torch.utils.data import DataLoader, Dataset

import dropkit
from dropkit.ops import use_backend

torch.set_num_threads(2)
x = torch.ones(2**20)  # 2^19 elements per thread: above the kernel's threading threshold

def fingerprint(y):  # exact integers: how many kept, and the sum of their positions
    kept = (y != 0).nonzero().flatten()
    return torch.tensor([len(kept), int(kept.sum())])

class Masked(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        with use_backend("native"):
            return fingerprint(dropkit.dropout(x, 0.5, seed=i))

with use_backend("native"):
    parent = [fingerprint(dropkit.dropout(x, 0.5, seed=i)).tolist() for i in range(4)]  # threads run
loader = DataLoader(Masked(), batch_size=2, num_workers=2, multiprocessing_context="fork")
workers = [v.tolist() for batch in loader for v in batch]
print(json.dumps([parent, workers]))
"""


def _native_available() -> bool:
    try:
        with use_backend("native"):
            dropkit.dropout(torch.ones(8), 0.5, seed=0)
    except RuntimeError:  # use_backend's error when the library was not built
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.skipif(not _native_available(), reason="native backend not built")
def test_dataloader_workers_after_the_native_kernel_do_not_hang():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    parent, workers = json.loads(proc.stdout)
    assert workers == parent  # each worker drew the same masks as the parent for the same seed
    # The masks are real: about half of the 2^20 elements kept (binomial sd 512), seeds differ.
    assert all(abs(kept - 2**19) < 5 * 512 for kept, _ in parent)
    assert len({positions for _, positions in parent}) == 4
