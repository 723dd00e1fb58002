"""A patched Hugging Face model in the real transformers Trainer: short CPU fits on a tiny BERT
built from a config (no download). Its checkpoints load in a process that never imported
dropkit, with transformers reporting nothing; ``resume_from_checkpoint`` continues the exact
masks and rates of an uninterrupted run."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from interop_helpers import real

from dropkit.integrations.common import dropout_rates, stream_positions
from dropkit.patch import patch, unpatch
from dropkit.schedules import LinearWarmup

VOCAB, LENGTH, ROWS = 40, 8, 16


def tiny_bert(transformers):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
        self.labels = torch.randint(0, 2, (ROWS,), generator=g)

    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def fit(transformers, model, out, callbacks, *, max_steps=4, resume=None):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def patched(transformers, warmup=4):
    from dropkit.integrations.huggingface import DropkitCallback

    model = tiny_bert(transformers)
    patch(model, seed=0)
    return model, DropkitCallback(LinearWarmup(model, warmup_steps=warmup, p=0.3))


def plain_load(directory):
    """from_pretrained in a fresh interpreter that has never imported dropkit."""
    code = textwrap.dedent(f"""
        import json, sys, torch, transformers
        model, info = transformers.BertForSequenceClassification.from_pretrained(
            {str(directory)!r}, output_loading_info=True)
        ids = torch.arange(2 * {LENGTH}).reshape(2, {LENGTH}) % {VOCAB}
        with torch.no_grad():
            logits = model.eval()(input_ids=ids).logits
        print(json.dumps({{"info": {{k: sorted(map(str, v)) for k, v in info.items()}},
                          "logits": logits.tolist(),
                          "dropkit": any(m.startswith("dropkit") for m in sys.modules)}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_trainer_checkpoint_loads_in_plain_transformers(tmp_path):
    transformers = real("transformers")
    real("accelerate")  # transformers' Trainer needs it
    model, callback = patched(transformers)
    fit(transformers, model, tmp_path, [callback], max_steps=2)
    checkpoint = tmp_path / "checkpoint-2"
    assert model.config._attn_implementation.startswith("dropkit|")  # while patched
    ids = torch.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
    # The reference: what plain transformers writes for the same trained model without dropkit.
    unpatch(model)
    model.save_pretrained(tmp_path / "reference")
    safetensors = real("safetensors.torch")
    saved = safetensors.load_file(str(checkpoint / "model.safetensors"))
    assert set(saved) == set(safetensors.load_file(str(tmp_path / "reference" / "model.safetensors")))
    config = json.loads((checkpoint / "config.json").read_text())
    assert config == json.loads((tmp_path / "reference" / "config.json").read_text())
    assert "dropkit" not in json.dumps(config)

    loaded, stderr = plain_load(checkpoint)
    assert loaded["dropkit"] is False
    assert all(v == [] for v in loaded["info"].values()), loaded["info"]
    assert "unexpected" not in stderr.lower() and "missing" not in stderr.lower(), stderr
    assert "warn" not in stderr.lower(), stderr
    # Evaluation of the patched model is transformers' own computation on the same weights.
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-6)


def test_resume_from_checkpoint_continues_exact_masks_and_rates(tmp_path):
    transformers = real("transformers")
    real("accelerate")  # transformers' Trainer needs it
    model, callback = patched(transformers)
    straight = fit(transformers, model, tmp_path / "a", [callback])
    state = json.loads((tmp_path / "a" / "checkpoint-2" / "trainer_state.json").read_text())
    saved_streams = state["stateful_callbacks"]["dropkit"]["streams"]
    assert saved_streams and all(p["offset"] > 0 for p in saved_streams.values())

    resumed_model, resumed_callback = patched(transformers)
    resumed = fit(transformers, resumed_model, tmp_path / "b", [resumed_callback],
                  resume=str(tmp_path / "a" / "checkpoint-2"))
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert stream_positions(resumed_model) == stream_positions(model)
    assert dropout_rates(resumed_model) == dropout_rates(model)

    def logged(trainer):
        history = trainer.state.log_history
        return [(h["step"], h["loss"], h["dropout/dropout"]) for h in history if "loss" in h]

    # LinearWarmup(4 steps, p=0.3), logged after each optimizer step t: 0.3 * t / 4.
    assert [round(r, 6) for _, _, r in logged(straight)] == [0.075, 0.15, 0.225, 0.3]
    assert logged(resumed) == logged(straight)  # steps 1-2 restored from the checkpoint, 3-4 run again

    # Control: the same resume without the callback starts the streams at offset 0 again.
    control = tiny_bert(transformers)
    patch(control, seed=0)
    LinearWarmup(control, warmup_steps=4, p=0.3).step()
    fit(transformers, control, tmp_path / "c", [], resume=str(tmp_path / "a" / "checkpoint-2"))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), control.parameters(), strict=True))


def test_save_pretrained_by_hand_with_side_file(tmp_path):
    transformers = real("transformers")
    from dropkit.integrations.huggingface import STREAMS_FILE, load_streams, save_streams

    model = tiny_bert(transformers)
    patch(model, seed=3)
    ids = torch.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB
    model.train()(input_ids=ids)
    model.save_pretrained(tmp_path)
    save_streams(model, tmp_path)
    assert (tmp_path / STREAMS_FILE).is_file()
    loaded, stderr = plain_load(tmp_path)
    assert all(v == [] for v in loaded["info"].values()) and "warn" not in stderr.lower(), stderr

    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    patch(again, seed=3)
    load_streams(again, tmp_path)
    again.train()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_patch_and_unpatch_keep_the_ignore_set_exact():
    transformers = real("transformers")
    model = tiny_bert(transformers)
    before = set(model._keys_to_ignore_on_save or ())
    patch(model, seed=0)
    streams = {k for k in model.state_dict() if k.endswith((".seed", ".offset"))}
    assert streams and model._keys_to_ignore_on_save == before | streams
    unpatch(model)
    assert model._keys_to_ignore_on_save == before
    unseeded = tiny_bert(transformers)
    patch(unseeded)  # no stream buffers: nothing to hide
    assert unseeded._keys_to_ignore_on_save == before


def test_callback_per_epoch_and_attach_order(tmp_path):
    transformers = real("transformers")
    real("accelerate")  # transformers' Trainer needs it
    from transformers.trainer_callback import (
        DefaultFlowCallback,
        PrinterCallback,
        TrainerControl,
        TrainerState,
    )

    from dropkit.integrations.huggingface import DropkitCallback

    model, _ = patched(transformers)
    callback = DropkitCallback(LinearWarmup(model, warmup_steps=4, p=0.3), every="epoch")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control, model=model)
    for epoch, expected in [(1.0, 0.075), (2.0, 0.15)]:
        state.epoch, state.global_step = epoch, int(epoch * 10)
        callback.on_step_end(None, state, control)  # per epoch: steps do not move the rates
        callback.on_epoch_end(None, state, control)
        assert model.dropout.p == pytest.approx(expected)
    logs = {"loss": 1.0}
    callback.on_log(None, state, control, logs=logs, model=model)
    assert logs["dropout/dropout"] == pytest.approx(0.15) and "dropout/bert.embeddings.dropout" in logs

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, callbacks=[PrinterCallback()])
    callback.attach(trainer)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert kinds.index(DefaultFlowCallback) + 1 == kinds.index(DropkitCallback) < kinds.index(PrinterCallback)
    with pytest.raises(ValueError, match="already"):
        callback.attach(trainer)
