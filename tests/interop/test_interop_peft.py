"""A PEFT LoRA model whose ``lora_dropout`` is patched: one training step on dropkit's stream,
``save_pretrained``, and the adapter loads in plain PEFT (a process that never imported dropkit)
with the trained weights and nothing reported that an unpatched adapter does not report."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from interop_helpers import real

from dropkit.patch import patch

VOCAB, LENGTH = 40, 8
BUILD = textwrap.dedent(f"""
    import torch, transformers
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size={VOCAB}, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16, num_labels=2)
    base = transformers.BertForSequenceClassification(config)
    ids = torch.arange(2 * {LENGTH}).reshape(2, {LENGTH}) % {VOCAB}
""")


def lora_model(peft, seed):
    scope = {}
    exec(BUILD, scope)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["query", "value"],
                             task_type="SEQ_CLS")
    model = peft.get_peft_model(scope["base"], config)
    report = patch(model, seed=seed) if seed is not None else None
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    return model, report, scope["ids"]


def plain_peft_load(directory):
    code = BUILD + textwrap.dedent(f"""
        import json, sys, warnings, peft
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, {str(directory)!r}).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        print(json.dumps({{"logits": logits.tolist(),
                          "dropkit": any(m.startswith("dropkit") for m in sys.modules)}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_patched_lora_trains_saves_and_loads_in_plain_peft(tmp_path):
    peft = real("peft")
    model, report, ids = lora_model(peft, seed=0)
    lora = [r for r in report.replaced if ".lora_dropout." in r.name]
    assert len(lora) == 4 and all(r.replacement == "Dropout" and r.p == 0.2 for r in lora)
    first = model.get_submodule(lora[0].name)
    assert first.stream_state()["offset"] > 0  # the LoRA branch drew its mask from dropkit's stream
    model.save_pretrained(tmp_path / "patched")
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits

    control, _, _ = lora_model(peft, seed=None)  # the same recipe without dropkit
    control.save_pretrained(tmp_path / "control")
    config = json.loads((tmp_path / "patched" / "adapter_config.json").read_text())
    assert config == json.loads((tmp_path / "control" / "adapter_config.json").read_text())

    # The adapter file also holds the LoRA dropouts' stream positions (PEFT keeps every key with
    # "lora_" in its name); plain PEFT loads adapters with strict=False and passes over them.
    safetensors = real("safetensors.torch")
    keys = {name: set(safetensors.load_file(str(tmp_path / name / "adapter_model.safetensors")))
            for name in ("patched", "control")}
    assert keys["patched"] - keys["control"] == {
        f"{r.name.removesuffix('.default')}.{b}" for r in lora for b in ("seed", "offset")}
    loaded, stderr = plain_peft_load(tmp_path / "patched")
    _, control_stderr = plain_peft_load(tmp_path / "control")
    assert loaded["dropkit"] is False
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-6)
    assert stderr == control_stderr, stderr  # plain PEFT reports nothing more than for its own adapter
