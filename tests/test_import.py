"""What `import dropkit` loads: nothing heavy until it is used.

Each check runs in a fresh interpreter and compares its ``sys.modules`` with what ``import torch``
alone loads in another fresh interpreter, so the test measures dropkit's own imports, whatever
torch's release imports by itself.
"""

import json
import subprocess
import sys
import textwrap

import pytest

# Loaded only when used: compilers, Triton, the command and the command's packages.
HEAVY = ("triton", "torch._inductor", "torch._dynamo", "matplotlib", "sklearn", "scipy", "tqdm",
         "dropkit.app", "transformers", "onnx", "onnxruntime", "setuptools", "dropkit.backends.triton")


def _modules(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def torch_alone() -> set[str]:
    return _modules("import torch")


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))


def test_import_dropkit_loads_neither_torch_nor_a_submodule():
    loaded = _modules("import dropkit")
    assert "torch" not in loaded
    assert sorted(n for n in loaded if n.startswith("dropkit.")) == []


def test_using_the_library_loads_nothing_heavy(torch_alone):
    loaded = _modules(
        """
        import torch
        import dropkit
        from dropkit.uncertainty import mc_predict
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), dropkit.Dropout(0.5, seed=0),
                                    dropkit.DropPath(0.1), dropkit.GaussianDropout(0.2))
        model(torch.randn(2, 4)).sum().backward()
        dropkit.functional.dropout(torch.randn(8), 0.5, seed=1)
        dropkit.ops.backend_name("cpu")
        """
    )
    assert "dropkit.layers" in loaded and "dropkit.ops" in loaded  # the check saw real use
    assert _heavy(loaded - torch_alone) == []


def test_the_command_is_what_loads_the_command(torch_alone):
    loaded = _modules("import dropkit.app.cli")
    assert "dropkit.app" in loaded
    # the command's plotting and learning packages wait for the subcommand that needs them
    assert [n for n in _heavy(loaded - torch_alone) if not n.startswith("dropkit.app")] == []
