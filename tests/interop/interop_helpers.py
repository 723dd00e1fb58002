"""Helpers for the tests against real third-party packages.

The packages: timm, torchvision, Lightning, Baal, torch-uncertainty, PEFT.

``real(name)`` imports a package for a test. Where the package is missing the test is skipped, except
when ``DROPKIT_REQUIRE_INTEROP=1`` is set (CI's interop environment sets it): there a missing or broken
package is a failure, so a CI run can never pass these tests by skipping them.
"""

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("DROPKIT_REQUIRE_INTEROP") == "1"


def real(name: str) -> ModuleType:
    """Import ``name``; skip the test where it is not installed, fail where it is required."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # an installed package can fail at import (torchvision's C ops)
        if REQUIRED:
            pytest.fail(f"{name} is required in this environment but does not import: {err!r}")
        pytest.skip(f"{name} does not import here: {err!r}")
