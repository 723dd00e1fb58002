"""benchmarks/memory.py on a tiny BERT-shaped model: the bytes dropout keeps for backward, measured
with saved-tensor hooks, against the element counts of the model's dropout outputs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dropout_saved_bytes_follow_the_element_counts(tmp_path):
    out = tmp_path / "memory.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--models", "bert_tiny", "--depth", "2",
         "--batch", "2", "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"torch", "dropkit"}
    # bert_tiny: batch 2 x 16 tokens, width 64, feed-forward 256; the embedding's dropout and, per
    # layer, dropout1 (width), the feed-forward dropout and dropout2 (width)
    per_module = [2 * 16 * 64] + [2 * 16 * 64, 2 * 16 * 256, 2 * 16 * 64] * 2
    torch_row, dk_row = rows["torch"], rows["dropkit"]
    assert torch_row["replaced"] == 0 and dk_row["replaced"] == 1 + 4 * 2  # 4 dropouts + attention per layer
    assert torch_row["dropout_saved_bytes"] >= sum(per_module)  # a bool mask or a float noise tensor
    assert dk_row["dropout_saved_bytes"] == sum((n + 7) // 8 for n in per_module)  # 1 bit per element
    saved_less = torch_row["dropout_saved_bytes"] - dk_row["dropout_saved_bytes"]
    assert torch_row["all_saved_bytes"] - dk_row["all_saved_bytes"] >= saved_less
    assert all(r["peak_rss_rise_bytes"] >= 0 for r in rows.values())
