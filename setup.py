"""Build script: the package metadata lives in pyproject.toml; this adds the native CPU kernel."""

from setuptools import setup

setup()
