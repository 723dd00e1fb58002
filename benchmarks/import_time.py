"""Import cost: ``import dropkit`` against ``import torch``, measured in one process.

Each repetition is a fresh interpreter that times, one after the other, ``import torch``,
``import dropkit`` (which loads nothing yet) and the first use of a layer (which loads
dropkit.layers, the ops and the native CPU kernel), so all three figures come from the same
process and the same warm disk cache. Prints the median over the repetitions.

Usage: python benchmarks/import_time.py [REPEATS]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

PROBE = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import dropkit
t2 = time.perf_counter()
dropkit.Dropout(0.5, seed=0)(torch.ones(8))
t3 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "dropkit": t2 - t1, "first_use": t3 - t2}))
"""


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    runs = []
    for _ in range(repeats + 1):  # the first run warms the disk cache and writes bytecode
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs = runs[1:]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"median of {repeats} fresh interpreters:")
    print(f"  import torch                       {med['torch'] * 1e3:8.1f} ms")
    print(f"  import dropkit (after torch)       {med['dropkit'] * 1e3:8.1f} ms")
    print(f"  first Dropout call (loads layers)  {med['first_use'] * 1e3:8.1f} ms"
          f"  ({med['first_use'] / med['torch']:.0%} of import torch)")


if __name__ == "__main__":
    main()
