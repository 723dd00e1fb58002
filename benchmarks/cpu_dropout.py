"""CPU dropout: dropkit's native kernel vs torch eager, torch.compile and x.clone(), side by side.

For N in 2**12, 2**16, 2**20, 2**24 (float32 and bfloat16) it prints the median time of each
case, torch's time over dropkit's (a speed-up), the time over x.clone()'s (the memory floor),
and the bytes saved for backward per element. The table is the one ``dropkit bench`` prints.

Run: ``python benchmarks/cpu_dropout.py [--sizes ...] [--dtypes ...] [--repeat R] [--threads T]
[--no-compile]``.
"""

import sys

from dropkit.app.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
