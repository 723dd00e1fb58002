"""The examples of docs/patching.md's section on training and uncertainty frameworks run as
written, with the real packages, and print what their comments say."""

import re
from pathlib import Path

import pytest
from interop_helpers import real
from test_interop_uncertainty_libs import needs_torch_classes

SECTION = "## Ecosystem: training and uncertainty frameworks"
TEXT = (Path(__file__).resolve().parents[2] / "docs" / "patching.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT.split(SECTION, 1)[1].split("\n## ", 1)[0], re.S)
# (packages the example imports, lines it prints)
EXPECTED = [
    (["transformers", "accelerate"], ["0.025"]),
    (["pytorch_lightning"], ["(20, 16, 3) 0.0"]),
    (["baal", "torch_uncertainty"], ["True", "True"]),
]


def test_the_section_is_last_and_has_the_examples():
    assert TEXT.rstrip().endswith(BLOCKS[-1].rstrip() + "\n```")
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize(
    "index", [0, 1, pytest.param(2, marks=needs_torch_classes)],
    ids=["huggingface", "lightning", "uncertainty"],
)
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    packages, printed = EXPECTED[index]
    for name in packages:
        real(name)
    monkeypatch.chdir(tmp_path)  # the Trainer example writes its run directory here
    exec(compile(BLOCKS[index], f"docs/patching.md#example-{index}", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.split("\n")[-len(printed) - 1:-1] == printed
