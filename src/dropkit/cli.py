"""The ``dropkit`` command."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

__all__ = ["main"]

_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dropkit`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="dropkit", description="Measure what dropout does to a model.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the guide's examples")
    args = parser.parse_args(argv)
    if args.command == "demo":
        for name in ("guide_mlp.py", "guide_cnn.py", "guide_worked_example.py"):
            print(f"== {name}")
            runpy.run_path(str(_EXAMPLES / name), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
