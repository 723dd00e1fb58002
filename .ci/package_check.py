"""The package as a user installs it: wheel and sdist into an environment that already holds torch.

1. ``python -m build`` makes the sdist and, from it, the wheel. The wheel must hold exactly the
   files of ``src/dropkit`` that git tracks, plus the compiled native library; the sdist must
   hold those files and the build files.
2. Each of three installs goes into a fresh virtual environment that already holds torch (a
   hard-linked copy of a cached environment with only torch and numpy, .ci/envs.sh): the wheel,
   the sdist (pip compiles the C library), and the sdist with ``CC=/bin/false`` (no compiler:
   dropkit installs anyway and runs on the reference backend). pip runs with torch and numpy
   pinned to the installed releases, and the environment's other packages must be the same
   afterwards: the install never touches the user's torch.
3. In each, from a folder outside the checkout and with ``python -I`` (no PYTHONPATH, no current
   folder on the path): dropkit is imported from the environment, the CPU backend is the native
   one (the reference one, with exactly one warning that names the reason, without a compiler),
   a dropout through it equals the reference backend's, and the ``dropkit`` command runs.

Usage: python .ci/package_check.py LOG_FOLDER (run from the repository root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]

# Run in the installed environment: everything it finds out, as JSON on the last line.
PROBE = r"""
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import dropkit
    import dropkit.ops
    name = dropkit.ops.backend_name("cpu")
    x = torch.randn(4096)
    y = dropkit.functional.dropout(x, 0.3, seed=7)
    with dropkit.ops.use_backend("reference"):
        ref = dropkit.functional.dropout(x, 0.3, seed=7)
from pathlib import Path
pkg = Path(dropkit.__file__).parent
print(json.dumps({
    "file": dropkit.__file__,
    "torch": torch.__version__,
    "backend": name,
    "agrees": bool(torch.equal(y, ref)),
    "files": sorted(str(p.relative_to(pkg.parent)) for p in pkg.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n")
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(str(c) for c in cmd)}")
    return done


def tracked_package_files() -> set[str]:
    out = run(["git", "ls-files", "src/dropkit"], cwd=ROOT).stdout.split()
    return {p.removeprefix("src/") for p in out}


def torch_holder() -> Path:
    """The cached environment with only torch and numpy (built by .ci/envs.sh if missing)."""
    done = run(["bash", "-c", "source .ci/envs.sh && ensure_env pkgtorch requirements/package-check.txt"],
               cwd=ROOT)
    print(done.stderr.strip())
    return Path(done.stdout.strip().splitlines()[-1])


def freeze(python: Path) -> list[str]:
    out = run([*PIP, "--python", str(python), "list", "--format=freeze"]).stdout.split()
    return sorted(line for line in out if not line.lower().startswith("dropkit=="))


def check_build(dist: Path, tracked: set[str]) -> tuple[Path, Path]:
    t = time.time()
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    print(f"build: {time.time() - t:.0f}s")
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    print(f"wheel {wheel.name}, {len(names)} files:")
    print("\n".join(f"  {n}" for n in names))
    package = {n for n in names if not n.startswith("dropkit-")}
    native = {n for n in package if n.startswith("dropkit/backends/cpu/_dropkit_cpu.")}
    if len(native) != 1:
        raise SystemExit(f"the wheel holds {len(native)} native libraries, not one: {sorted(native)}")
    missing, extra = tracked - package, package - tracked - native
    if missing or extra:
        raise SystemExit(f"wheel contents differ from src/dropkit: missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)}")
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        in_sdist = {m.name.removeprefix(top + "/") for m in tar.getmembers() if m.isfile()}
    needed = {f"src/{p}" for p in tracked} | {"pyproject.toml", "setup.py", "README.md", "LICENSE"}
    if needed - in_sdist:
        raise SystemExit(f"the sdist lacks {sorted(needed - in_sdist)}")
    print(f"sdist {sdist.name}: {len(in_sdist)} files, every source and build file present")
    return wheel, sdist


def check_install(label: str, artifact: Path, holder: Path, work: Path, tracked: set[str],
                  compiler: bool, before: list[str]) -> str:
    t = time.time()
    venv = work / label
    run(["cp", "-al", str(holder), str(venv)])
    python = venv / "bin" / "python"
    pins = work / f"{label}-pins.txt"
    pins.write_text("\n".join(line for line in before if line.split("==")[0] in ("torch", "numpy")) + "\n")
    env = dict(os.environ)
    if not compiler:
        env["CC"] = "/bin/false"
    cmd = [*PIP, "--python", str(python), "install", "--quiet", "--no-compile", "-c", str(pins),
           str(artifact)]
    if artifact.suffix == ".whl":
        cmd.insert(cmd.index("install") + 1, "--no-index")  # the wheel needs nothing that is not there
    run(cmd, env=env)
    after = freeze(python)
    if after != before:
        changed = sorted(set(before) ^ set(after))
        raise SystemExit(f"{label}: installing dropkit changed the environment: {changed}")
    outside = Path(tempfile.mkdtemp(prefix="dropkit-outside-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DROPKIT_"))}
    probe = run([str(python), "-I", "-c", PROBE], cwd=outside, env=env)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    site = str(venv)
    if not found["file"].startswith(site):
        raise SystemExit(f"{label}: dropkit was imported from {found['file']}, not from {site}")
    native = {f for f in found["files"] if f.startswith("dropkit/backends/cpu/_dropkit_cpu.")}
    missing = tracked - set(found["files"])
    if missing:
        raise SystemExit(f"{label}: the installed package lacks {sorted(missing)}")
    if not found["agrees"]:
        raise SystemExit(f"{label}: dropout on the {found['backend']} backend differs from the reference")
    if compiler:
        if found["backend"] != "cpu" or len(native) != 1 or found["warnings"]:
            raise SystemExit(f"{label}: expected the native backend and no warning, got {found}")
    else:
        cpu_warnings = [w for w in found["warnings"] if "dropkit.backends.cpu" in w]
        if found["backend"] != "reference" or native or len(found["warnings"]) != 1 or len(cpu_warnings) != 1:
            raise SystemExit(f"{label}: expected the reference backend and one warning, got {found}")
        print(f"{label}: the one warning without a compiler: {found['warnings'][0]}")
    command = run([str(venv / "bin" / "dropkit"), "--help"], cwd=outside, env=env)
    if "usage" not in command.stdout.lower():
        raise SystemExit(f"{label}: `dropkit --help` printed no usage: {command.stdout!r}")
    shutil.rmtree(outside)
    return (f"{label}: ok (torch {found['torch']} untouched, backend {found['backend']}, "
            f"{len(found['files'])} files, command runs) in {time.time() - t:.0f}s")


def main() -> None:
    logs = Path(sys.argv[1] if len(sys.argv) > 1 else "build/ci").resolve()
    dist = logs / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    tracked = tracked_package_files()
    holder = torch_holder()
    wheel, sdist = check_build(dist, tracked)
    before = freeze(holder / "bin" / "python")
    cases = [("wheel", wheel, True), ("sdist", sdist, True), ("sdist-no-compiler", sdist, False)]
    # The three installs are independent (each in its own copy): run them side by side.
    with tempfile.TemporaryDirectory(prefix="dropkit-pkg-") as tmp, ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(check_install, label, artifact, holder, Path(tmp), tracked, compiler, before)
                for label, artifact, compiler in cases]
        for job in jobs:
            print(job.result(), flush=True)
    print("package check passed")


if __name__ == "__main__":
    main()
