"""The guarantees of docs/reproducibility.md: masks depend on (seed, offset, shape, p) only."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from dropkit import ops
from dropkit.functional import dropout, dropout_mask
from dropkit.layers import Dropout
from dropkit.rng import keep_threshold, philox_words

ROOT = Path(__file__).resolve().parents[1]
TRITON_BACKEND = ROOT / "src" / "dropkit" / "backends" / "triton.py"


def expected(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """Inverted dropout of ``x`` computed from the raw stream words, by logical index."""
    keep = (philox_words(seed, offset, x.numel()) >= keep_threshold(p)).view(x.shape)
    return torch.where(keep, x.float() * (1.0 / (1.0 - p)), torch.zeros(())).to(x.dtype)


# --- same masks for the same seed and offset ---------------------------------------------------


@pytest.mark.skipif(
    ops.backend_name("cpu") == "reference",
    reason="the native CPU backend is not built: default and reference backends are the same code",
)
@pytest.mark.parametrize("storage", ["bits", "seed", "bool"])
@pytest.mark.parametrize("shape, offset", [((7,), 0), ((33, 65), 5), ((4, 3, 17, 9), 2**32 - 1)])
def test_native_backend_matches_reference(shape, offset, storage):
    x = torch.randn(shape, requires_grad=True)
    grads, outputs = [], []
    for backend in ("reference", "auto"):
        with ops.use_backend(backend):
            y = dropout(x, 0.3, seed=99, offset=offset, mask_storage=storage)
            (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        outputs.append(y)
        grads.append(g)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(grads[0], grads[1])
    assert torch.equal(outputs[0], expected(x.detach(), 0.3, 99, offset))


def test_one_and_two_threads_give_the_same_mask():
    x = torch.randn(1 << 18)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(dropout(x, 0.5, seed=3, offset=11))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], expected(x, 0.5, 3, 11))


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
def test_mask_follows_logical_index_not_memory(layout):
    base = torch.randn(2, 3, 5, 4)  # (N, C, H, W)
    x = {
        "contiguous": base,
        "transposed": base.transpose(1, 3),  # logical (N, W, H, C), strided
        "channels_last": base.contiguous(memory_format=torch.channels_last),
    }[layout].requires_grad_()
    y = dropout(x, 0.4, seed=5, offset=1)
    want = expected(x.detach(), 0.4, 5, 1)
    assert torch.equal(y, want)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g, expected(torch.ones_like(want), 0.4, 5, 1))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def _two_steps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [model(x) for _ in range(2)]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_masks_equal_eager(backend):
    torch._dynamo.reset()
    x = torch.randn(8, 32)
    eager = Dropout(0.3, seed=21)
    compiled_layer = Dropout(0.3, seed=21)
    compiled = torch.compile(compiled_layer, backend=backend, fullgraph=True)
    want = _two_steps(eager, x)
    got = _two_steps(compiled, x)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert compiled_layer.stream_state() == eager.stream_state()
    assert torch.equal(want[1], expected(x, 0.3, 21, offset=(8 * 32) // 4))


@pytest.mark.skipif(
    not TRITON_BACKEND.exists(), reason="the Triton backend (backends/triton.py) is not written yet"
)
def test_triton_interpreter_matches_cpu_reference():
    # An older Triton is refused (tests/test_torch_range.py checks the message).
    pytest.importorskip("triton", minversion="3.2")
    # TRITON_INTERPRET=1 runs Triton kernels on CPU tensors; a subprocess keeps it from leaking.
    code = textwrap.dedent(
        """
        import torch
        from dropkit.backends import reference, triton as tb
        for n, seed, offset in [(1, 0, 0), (1000, 2**64 - 1, 7), (4099, 12345, 2**32 - 1)]:
            t = round(0.3 * 2**32)
            assert torch.equal(tb.keep_mask(n, seed, offset, t, "cpu").cpu(),
                               reference.keep_mask(n, seed, offset, t, "cpu")), (n, seed, offset)
            x = torch.randn(n)
            for storage in ("bits", "seed", "bool"):
                y, saved = tb.dropout_forward(x, seed, offset, t, 1 / 0.7, storage)
                y_ref, saved_ref = reference.dropout_forward(x, seed, offset, t, 1 / 0.7, storage)
                assert torch.equal(y.cpu(), y_ref) and torch.equal(saved.cpu(), saved_ref), storage
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


# --- exact resume in a new process --------------------------------------------------------------


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    worker = Path(__file__).with_name("resume_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for phase in ("full", "resume"):
        done = subprocess.run(
            [sys.executable, str(worker), phase, str(tmp_path), "5"], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resume.pt")
    for mode in ("seeded", "default"):
        for name, value in full[mode].items():
            assert torch.equal(resumed[mode, True][name], value), (mode, name)
    # Seeded layers carry their stream in the state_dict: torch's RNG state is not needed.
    assert all(torch.equal(resumed["seeded", False][k], v) for k, v in full["seeded"].items())
    # The default mode draws from torch's generator: without its state the run goes elsewhere.
    assert not all(torch.equal(resumed["default", False][k], v) for k, v in full["default"].items())


# --- activation checkpointing ------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, storage: str, seeded: bool | str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
        kw = {"mask_storage": storage}
        if seeded == "generator":  # a user generator, which torch.utils.checkpoint does not restore
            gen = torch.Generator().manual_seed(5)
            self.drop1, self.drop2 = Dropout(0.4, generator=gen, **kw), Dropout(0.3, generator=gen, **kw)
        else:
            self.drop1 = Dropout(0.4, seed=1, **kw) if seeded else Dropout(0.4, **kw)
            self.drop2 = Dropout(0.3, seed=2, **kw) if seeded else Dropout(0.3, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(torch.tanh(self.fc1(x)))))


def _masks_of(block: Block) -> list:
    masks: list = []
    for layer in (block.drop1, block.drop2):
        layer.register_forward_hook(lambda m, i, o: masks.append((o != 0) | (i[0] == 0)))
    return masks


def _run(block: Block, x: torch.Tensor, reentrant: bool | None) -> tuple:
    masks = _masks_of(block)
    torch.manual_seed(7)
    out = x
    for _ in range(2):  # two regions in a row: recomputed in reverse order
        if reentrant is None:
            out = block(out)
        else:
            out = checkpoint(block, out, use_reentrant=reentrant)
    out.pow(2).sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    return out.detach(), grads, masks


@pytest.mark.parametrize("seeded", [True, False, "generator"], ids=["seeded", "default-seed", "generator"])
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("storage", ["bits", "seed", "bool"])
def test_activation_checkpointing_recomputes_the_same_masks(storage, reentrant, seeded):
    x = torch.randn(4, 16, requires_grad=True)
    plain = Block(storage, seeded)
    y0, g0, m0 = _run(plain, x, None)
    # Early stop (the default) ends a recomputation inside the last layer, before its hooks run;
    # without it every recomputed call is visible.
    for early_stop in (True, False):
        ckpt = Block(storage, seeded)
        with set_checkpoint_early_stop(early_stop):
            y1, g1, m1 = _run(ckpt, x, reentrant)
        assert torch.equal(y0, y1)
        for a, b in zip(g0, g1, strict=True):
            assert torch.equal(a, b)
        if seeded is True:
            assert ckpt.drop1.stream_state() == plain.drop1.stream_state()
            assert ckpt.drop2.stream_state() == plain.drop2.stream_state()
    # 4 original calls, then 4 recomputed ones (region 2 first), each equal to its original.
    assert len(m1) == 8
    for i, j in zip(range(4, 8), [2, 3, 0, 1], strict=True):
        assert torch.equal(m1[i], m1[j]) and torch.equal(m1[j], m0[j])


def test_checkpointed_gradient_accumulation_over_two_forwards():
    torch.manual_seed(0)
    lin, drop = torch.nn.Linear(8, 8), Dropout(0.5, seed=4)
    x1, x2 = torch.randn(3, 8), torch.randn(5, 8)
    want = (drop(lin(x1)).sum() + 2 * drop(lin(x2)).sum()).detach()
    drop2 = Dropout(0.5, seed=4)
    loss = checkpoint(lambda t: drop2(lin(t)), x1, use_reentrant=False).sum()
    loss = loss + 2 * checkpoint(lambda t: drop2(lin(t)), x2, use_reentrant=False).sum()
    assert torch.equal(loss.detach(), want)
    loss.backward()
    # d loss / d bias = sum over kept elements of the scale, from the two forwards' own masks.
    k1 = dropout_mask((3, 8), 0.5, seed=4, offset=0)
    k2 = dropout_mask((5, 8), 0.5, seed=4, offset=6)
    assert torch.equal(lin.bias.grad, 2.0 * k1.sum(0) + 4.0 * k2.sum(0))


@pytest.mark.parametrize("reentrant", [False, True])
def test_one_seeded_layer_twice_in_one_region_replays_both_calls(reentrant):
    grads = []
    for use_checkpoint in (False, True):
        x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
        drop = Dropout(0.5, seed=0)
        twice = torch.nn.Sequential(drop, drop)
        y = checkpoint(twice, x * 2, use_reentrant=reentrant) if use_checkpoint else twice(x * 2)
        y.sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


# --- no silent mask reuse ----------------------------------------------------------------------


def test_two_unseeded_layers_never_share_a_mask():
    torch.manual_seed(0)
    a, b = Dropout(0.5), Dropout(0.5)
    x = torch.ones(64, 64)
    assert not torch.equal(a(x) != 0, b(x) != 0)


@pytest.mark.parametrize("seeded", [True, False])
def test_a_layer_never_repeats_a_mask_across_steps(seeded):
    torch.manual_seed(0)
    layer = Dropout(0.5, seed=8) if seeded else Dropout(0.5)
    x = torch.ones(16, 16)
    masks = {tuple((layer(x) != 0).flatten().tolist()) for _ in range(50)}
    assert len(masks) == 50


def test_concurrent_calls_reserve_distinct_offsets():
    layer = Dropout(0.5, seed=31)
    x = torch.ones(8, 10)  # 80 words: 20 blocks per call
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda _: layer(x) != 0, range(64)))
    assert layer.stream_state()["offset"] == 64 * 20
    want = {tuple(dropout_mask((8, 10), 0.5, seed=31, offset=20 * k).flatten().tolist()) for k in range(64)}
    assert {tuple(m.flatten().tolist()) for m in outs} == want
