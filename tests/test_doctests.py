"""Every Example in dropkit's docstrings runs as written and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import dropkit

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(dropkit.__path__, prefix="dropkit.")
    # __main__ runs the command; _dropkit_cpu is the compiled kernel, a library with no docstrings
    if name not in ("dropkit.__main__", "dropkit.backends.cpu._dropkit_cpu")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.startswith("dropkit.backends.triton"):
        pytest.importorskip("triton")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        # The framework integrations import their framework (tested with it in tests/interop).
        if not name.startswith("dropkit.integrations.") or (err.name or "").startswith("dropkit"):
            raise
        pytest.skip(f"{name} needs {err.name}, which is not installed here")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
