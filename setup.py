"""Build script: the package metadata lives in pyproject.toml; this adds the native CPU kernel.

The kernel is plain C (no PyTorch headers) loaded with ctypes; py_entry.c adds CPython entry points
for the three functions every dropout call makes (ctypes converts their arguments in about 3 us
per call; the entry points in C, in a tenth of that). SIMD paths are chosen
at run time, so it is compiled without -march flags; each SIMD file enables its own instruction
set with a target pragma. Threads come from OpenMP when the compiler has it (the library then
shares the libgomp.so.1 that torch loads), from pthreads otherwise. The build is optional:
without a working C compiler dropkit installs anyway and runs on the reference backend
(dropkit.backends.cpu.load_error() says why).
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_SOURCES = [
    "dk_cpu.c", "dk_bcast.c", "dk_dropblock.c", "dk_words.c", "dk_noise.c",
    "dk_scalar.c", "dk_avx2.c", "dk_avx512.c", "dk_neon.c", "py_entry.c",
]
# -ffp-contract=off: every product and sum must be rounded exactly as the reference backend rounds
# it. -fno-math-errno: sqrt compiles to the instruction (its argument is never negative here).
_CFLAGS = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno",
                                               "-pthread"]
_LDFLAGS = [] if sys.platform == "win32" else ["-pthread"]


class BuildExt(build_ext):
    """Adds -fopenmp where the compiler accepts it, so the threads are OpenMP's."""

    def build_extensions(self) -> None:
        if sys.platform != "win32" and os.environ.get("DROPKIT_NO_OPENMP") != "1" and self._has_openmp():
            for ext in self.extensions:
                ext.extra_compile_args = [*ext.extra_compile_args, "-fopenmp"]
                ext.extra_link_args = [*ext.extra_link_args, "-fopenmp"]
        super().build_extensions()

    def _has_openmp(self) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_executable(objs, "omp", output_dir=tmp, extra_postargs=["-fopenmp"])
            except Exception:  # any compiler or linker failure means: no OpenMP here
                return False
        return True


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "dropkit.backends.cpu._dropkit_cpu",
            sources=[f"src/dropkit/backends/cpu/{name}" for name in _SOURCES],
            depends=["src/dropkit/backends/cpu/dk_common.h", "src/dropkit/backends/cpu/dk_normal.h"],
            extra_compile_args=_CFLAGS,
            extra_link_args=_LDFLAGS,
            optional=True,
        )
    ],
)
