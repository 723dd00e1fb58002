"""The declared torch range is the tested one, and features newer than the oldest end say so."""

import re
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from torch import nn

import dropkit
from dropkit import _torch
from dropkit.backends._shared import MIN_TRITON, check_triton_version

ROOT = Path(__file__).resolve().parent.parent


def _pin(path: str, name: str) -> Version:
    for line in (ROOT / path).read_text().splitlines():
        req = line.split("#")[0].strip()
        if req and Requirement(req).name == name:
            (spec,) = Requirement(req).specifier
            assert spec.operator == "==", line
            return Version(spec.version)
    raise AssertionError(f"{path} pins no {name}")


def _declared_torch():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*)\]$", text, re.M).group(1)
    (torch_req,) = [d for d in re.findall(r'"([^"]+)"', deps) if d.startswith("torch")]
    return torch_req


def test_the_declared_range_is_the_tested_range():
    spec = Requirement(_declared_torch()).specifier
    oldest, newest = _pin("requirements/oldest.txt", "torch"), _pin("requirements/interop.txt", "torch")
    makefile = (ROOT / "Makefile").read_text()
    pinned = Version(re.search(r"^TORCH_PIN \?= torch==(\S+)$", makefile, re.M).group(1))
    lower = [s for s in spec if s.operator == ">="]
    assert [Version(s.version) for s in lower] == [oldest]  # the minimum is the oldest tested release
    for release in (oldest, pinned, newest):
        assert spec.contains(release), release
    # nothing newer than the newest tested minor release is admitted
    assert not spec.contains(Version(f"{newest.major}.{newest.minor + 1}.0"))


def test_the_install_guide_states_the_declared_range():
    guide = (ROOT / "docs" / "install.md").read_text()
    oldest, newest = _pin("requirements/oldest.txt", "torch"), _pin("requirements/interop.txt", "torch")
    assert f"torch {oldest}" in guide and f"torch {newest}" in guide
    assert f"`{_declared_torch()}`" in guide
    for name, since in _torch.SINCE.items():
        assert f"{since[0]}.{since[1]}" in guide, name


@pytest.mark.parametrize("version", ["3.1.0", "3.0.0", "2.3.1"])
def test_an_older_triton_is_refused_by_name(version):
    with pytest.raises(ImportError, match=rf"triton {re.escape(version)} is older than 3\.2"):
        check_triton_version(version)


@pytest.mark.parametrize("version", ["3.2.0", "3.9.0", "3.10.1+git4f2e1a", "4.0.0"])
def test_a_supported_triton_is_accepted(version):
    check_triton_version(version)


def test_the_installed_triton_loads_or_is_refused():
    triton = pytest.importorskip("triton")
    found = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])
    if found >= MIN_TRITON:
        import dropkit.backends.triton  # noqa: F401
    else:
        with pytest.raises(ImportError, match="older than 3.2"):
            import dropkit.backends.triton  # noqa: F401


def _composable_grad(checkpointed: bool) -> torch.Tensor:
    from torch.distributed._composable import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), dropkit.Dropout(0.5, seed=3), nn.Linear(8, 8))
    if checkpointed:
        checkpoint(model)
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()
    return model[0].weight.grad


def test_composable_checkpoint_replays_or_refuses_with_the_release_it_needs():
    if _torch.TORCH_RELEASE >= _torch.SINCE["saved-tensor hooks"]:
        assert torch.equal(_composable_grad(False), _composable_grad(True))
    else:
        with pytest.raises(RuntimeError, match=r"composable checkpoint.*torch >= 2\.8 has it"):
            _composable_grad(True)


def test_release_reads_local_and_prerelease_versions():
    assert _torch.release("2.5.1+cu124") == (2, 5)
    assert _torch.release("2.14.0a0+git123") == (2, 14)
    with pytest.raises(ValueError, match="'nightly'"):
        _torch.release("nightly")
