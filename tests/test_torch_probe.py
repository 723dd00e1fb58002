"""Private torch stays in dropkit/_torch.py, and a torch whose checkpoint internals moved breaks
only checkpointed dropout.

The first part reads src/dropkit with :mod:`ast` and lists every use of a private torch name
(``torch._x``, ``nn.modules.batchnorm._BatchNorm``, ``module._buffers``, ...) outside _torch.py;
the private member names are taken from torch itself (``dir`` of a module, a tensor, a Function),
so a new one is caught without being listed here. The second part simulates a torch release on
which _torch.py cannot find torch.utils.checkpoint's functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit import _torch
from dropkit.uncertainty import mc_predict

SRC = Path(dropkit.__file__).parent

# Private members of the torch objects dropkit's code holds: nn.Module, Tensor, Function, Generator.
PRIVATE_MEMBERS = {
    name
    for obj in (nn.Module(), torch.Tensor, torch.autograd.Function, torch.Generator, nn.Parameter)
    for name in dir(obj)
    if name.startswith("_") and not name.startswith("__")
}

# (file, expression) -> why it may stay outside _torch.py. Nothing else may.
ALLOWED = {
    ("layers/_base.py", "self._buffers"):
        "a StreamModule reading its own buffer dict, as nn.Module's own methods do; it runs on every "
        "forward, where a call through _torch.py would cost one more Python call",
    ("layers/_base.py", "super()._load_from_state_dict"):
        "the override point nn.Module documents for subclasses that check what load_state_dict loads",
    ("layers/attention.py", "self._modules"):
        "MultiheadAttention reading its own child dict for its `dropout` property, which torch's "
        "forward reads on every call",
    ("schedules.py", "self._apply"):
        "the schedule's own method (schedules are not modules); the name only matches nn.Module._apply",
}


def private_torch_uses(path: Path) -> set[tuple[str, str]]:
    """(kind, expression) for each private torch name ``path`` uses."""
    tree = ast.parse(path.read_text(), filename=str(path))
    torch_names: set[str] = set()  # local names bound to torch or one of its modules/objects
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    torch_names.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for alias in node.names:
                torch_names.add(alias.asname or alias.name)
                if alias.name.startswith("_") or any(p.startswith("_") for p in node.module.split(".")):
                    found.add(("import", f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, root = [], node
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in torch_names:
                if any(p.startswith("_") and not p.startswith("__") for p in chain):
                    found.add(("torch name", ast.unparse(node)))
            if node.attr in PRIVATE_MEMBERS:
                found.add(("member", ast.unparse(node)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("torch._") or node.value in PRIVATE_MEMBERS:
                found.add(("string", node.value))  # getattr(module, "_buffers") and the like
    return found


def test_the_scan_finds_each_kind_of_private_use(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch\nfrom torch import nn\nfrom torch.utils.checkpoint import _checkpoint_hook\n"
        "a = torch._C._get_tracing_state()\nb = nn.modules.batchnorm._BatchNorm\n"
        "def f(m, p):\n    m._parameters['w'] = p\n    return getattr(m, '_buffers')\n"
        "ok = torch.nn.functional.dropout\n"
    )
    assert private_torch_uses(probe) == {
        ("import", "from torch.utils.checkpoint import _checkpoint_hook"),
        ("torch name", "torch._C._get_tracing_state"),
        ("torch name", "torch._C"),
        ("torch name", "nn.modules.batchnorm._BatchNorm"),
        ("member", "m._parameters"),
        ("string", "_buffers"),
    }


def test_private_torch_is_used_only_in_the_torch_module():
    files = sorted(p for p in SRC.rglob("*.py") if p.name != "_torch.py")
    assert len(files) > 30
    uses = {
        (str(path.relative_to(SRC)), expression)
        for path in files
        for _, expression in private_torch_uses(path)
    }
    assert sorted(uses - set(ALLOWED)) == []
    assert private_torch_uses(SRC / "_torch.py")  # the scan does see the one place that uses them


# --- a torch whose torch.utils.checkpoint layout is unknown ---------------------------------------


@pytest.fixture
def unknown_checkpoint_layout(monkeypatch):
    """_torch.py's probe run again on a torch whose checkpoint functions it cannot find."""

    def moved() -> dict:
        raise AttributeError("simulated: torch.utils.checkpoint's functions moved")

    monkeypatch.setattr(_torch, "_checkpoint_codes", moved)
    _torch._probe_checkpoint_layout()
    assert "torch.utils.checkpoint layout" in _torch.probe_errors()
    yield
    monkeypatch.undo()
    _torch._probe_checkpoint_layout()
    assert _torch.probe_errors() == {}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), dropkit.Dropout(0.3, seed=5), nn.ReLU(), nn.Linear(8, 2))


def _train_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.train()
    model.zero_grad()
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def test_plain_training_and_mc_dropout_run_without_the_checkpoint_layout(request):
    x = torch.randn(4, 6)
    expected_step = _train_step(_model(), x)
    expected_mc = mc_predict(_model(), x, 5, seed=3)
    with torch.no_grad():
        expected_no_grad = _model().train()(x)
    assert not torch.equal(expected_mc[0], expected_mc[1])  # the passes do differ

    request.getfixturevalue("unknown_checkpoint_layout")
    y, grads = _train_step(_model(), x)
    assert torch.equal(y, expected_step[0])
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_step[1], strict=True))
    assert torch.equal(mc_predict(_model(), x, 5, seed=3), expected_mc)
    with torch.no_grad():
        assert torch.equal(_model().train()(x), expected_no_grad)
    # Saved-tensor hooks that are not checkpoint's (offloading to the CPU) do not make a region.
    with torch.autograd.graph.save_on_cpu():
        y, grads = _train_step(_model(), x)
    assert torch.equal(y, expected_step[0])


def test_a_plain_grad_recording_call_never_asks_for_checkpoint_regions(monkeypatch):
    x = torch.randn(4, 6, requires_grad=True)
    expected = dropkit.dropout(x, 0.3, seed=5)

    def asked() -> list:
        raise AssertionError("a plain training-mode call looked for checkpoint regions")

    monkeypatch.setattr(_torch, "checkpoint_regions", asked)
    y = dropkit.Dropout(0.3, seed=5)(x)
    assert torch.equal(y, expected)
    y.sum().backward()


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_dropout_refuses_with_a_clear_error(unknown_checkpoint_layout, reentrant):
    layer = dropkit.Dropout(0.3, seed=5)
    x = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"inside torch\.utils\.checkpoint.*does not have.*simulated"):
        checkpoint(layer, x, use_reentrant=reentrant)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_dropout_replays_exactly_with_the_layout_known(reentrant):
    # The same calls as above, on this torch: the probe finds the layout and replay is exact.
    x = torch.randn(4, 6, requires_grad=True)
    y = checkpoint(dropkit.Dropout(0.3, seed=5), x, use_reentrant=reentrant)
    y.backward(torch.ones_like(y))
    expected = dropkit.dropout(torch.ones(4, 6), 0.3, seed=5)  # the mask times the scale
    assert torch.equal(x.grad, expected)
