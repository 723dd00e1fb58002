"""Build script: the package metadata lives in pyproject.toml; this adds the native CPU kernel.

The kernel is plain C (no PyTorch or Python headers) loaded with ctypes. SIMD paths are chosen
at run time, so it is compiled without -march flags; each SIMD file enables its own instruction
set with a target pragma. The build is optional: without a working C compiler dropkit installs
anyway and runs on the reference backend (dropkit.backends.cpu.load_error() says why).
"""

import sys

from setuptools import Extension, setup

_SOURCES = ["dk_cpu.c", "dk_scalar.c", "dk_avx2.c", "dk_avx512.c"]
# -ffp-contract=off: the product must be rounded exactly as the reference backend rounds it.
_CFLAGS = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-ffp-contract=off", "-pthread"]

setup(
    ext_modules=[
        Extension(
            "dropkit.backends.cpu._dropkit_cpu",
            sources=[f"src/dropkit/backends/cpu/{name}" for name in _SOURCES],
            depends=["src/dropkit/backends/cpu/dk_common.h"],
            extra_compile_args=_CFLAGS,
            extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
            optional=True,
        )
    ]
)
