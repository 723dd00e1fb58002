"""What ``import dropkit`` costs a program that has already imported torch.

``import dropkit`` loads nothing of the library until a name is used (PEP 562) and never the
``dropkit`` command. This script times, in fresh interpreters that have imported torch first:

* **lazy**: ``import dropkit`` as it is;
* **every name**: ``import dropkit`` and then every name of ``dropkit.__all__``, which is what
  an ``__init__.py`` importing its names eagerly costs;
* **every name + command**: the same plus ``dropkit.app`` and ``dropkit.app.models`` (the
  command's start-up module and the demo's models), which is what ``import dropkit`` loaded
  while the command lived in the library.

The cases take turns, one fresh interpreter per sample, so drift on a busy machine hits them
alike; medians are printed side by side with the modules each case loaded.

Run: ``python benchmarks/import_names.py [--reps R]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = {
    "lazy": "import dropkit",
    "every name": "import dropkit\nfor name in dropkit.__all__:\n    getattr(dropkit, name)",
    "every name + command": "import dropkit\nfor name in dropkit.__all__:\n    getattr(dropkit, name)\n"
                            "import dropkit.app, dropkit.app.models",
}

CHILD = """
import sys, time
import torch
before = set(sys.modules)
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
loaded = sorted(m for m in set(sys.modules) - before if m.startswith("dropkit"))
import json
print(json.dumps({{"ms": seconds * 1e3, "dropkit_modules": len(loaded),
                  "app": any(m.startswith("dropkit.app") for m in loaded)}}))
"""


def sample(body: str) -> dict:
    code = CHILD.format(body=body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="fresh interpreters per case")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    info: dict[str, dict] = {}
    for _ in range(args.reps):
        for name, body in CASES.items():
            result = sample(body)
            times[name].append(result["ms"])
            info[name] = result
    lazy = statistics.median(times["lazy"])
    print(f"import dropkit after import torch, median of {args.reps} fresh interpreters")
    print(f"{'case':<22} {'ms':>8} {'x lazy':>8} {'dropkit modules':>16} {'loads dropkit.app':>18}")
    for name in CASES:
        ms = statistics.median(times[name])
        print(f"{name:<22} {ms:>8.2f} {ms / lazy:>8.1f} {info[name]['dropkit_modules']:>16} "
              f"{'yes' if info[name]['app'] else 'no':>18}")


if __name__ == "__main__":
    main()
