"""The interop environment really has the packages its tests need."""

import pytest
from interop_helpers import REQUIRED, real


@pytest.mark.parametrize("name", ["transformers"])
def test_packages_import(name):
    assert real(name).__version__
    if REQUIRED:
        assert real(name) is not None
