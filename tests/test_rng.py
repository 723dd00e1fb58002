"""The philox-v1 stream against Random123's published vectors and the docs/rng.md contract."""

import math

import pytest
import torch

from dropkit import rng

# Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_random123_known_answers(counter, key, expected):
    assert rng.philox4x32(counter, key) == expected


def _word(seed: int, offset: int, i: int) -> int:
    """Word i of the stream, computed one block at a time from the scalar generator."""
    c = (offset + i // 4) % 2**64
    block = rng.philox4x32((c & 0xFFFFFFFF, c >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
    return block[i % 4]


@pytest.mark.parametrize(
    "seed,offset",
    [(0, 0), (123456789, 5), (2**64 - 1, 2**32 - 2), (2**63 + 17, 2**64 - 2), (1, 2**40 + 3)],
)
def test_words_follow_the_counter_layout(seed, offset):
    n = 23  # not a multiple of 4, and crosses the 2**32 / 2**64 counter boundaries above
    words = rng.philox_words(seed, offset, n).tolist()
    assert words == [_word(seed, offset, i) for i in range(n)]


def test_words_are_a_prefix_and_offsets_compose():
    a = rng.philox_words(9, 0, 40)
    assert torch.equal(rng.philox_words(9, 0, 13), a[:13])
    assert torch.equal(rng.philox_words(9, 3, 28), a[12:])


def test_keep_threshold():
    assert rng.keep_threshold(0.0) == 0
    assert rng.keep_threshold(1.0) == 2**32
    assert rng.keep_threshold(0.5) == 2**31
    assert rng.keep_threshold(0.1) == round(0.1 * 2**32)
    assert rng.keep_threshold(2.0**-33) == 0  # exactly 0.5 rounds to even
    assert rng.keep_threshold(3 * 2.0**-33) == 2  # exactly 1.5 rounds to even


def test_blocks_for():
    assert [rng.blocks_for(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_uniforms_open_interval_and_exact():
    w = torch.tensor([0, 255, 256, 2**31, 2**32 - 1])
    u = rng.words_to_uniform(w, torch.float64)
    expected = [((int(v) >> 8) + 0.5) / 2**24 for v in w]
    assert u.tolist() == expected
    assert 0 < u.min() and u.max() < 1
    u32 = rng.words_to_uniform(w, torch.float32)
    assert torch.equal(u32[:-1].double(), u[:-1].float().double())
    assert u32[-1].item() == 1.0 - 2.0**-24  # would round to 1.0; clamped inside (0, 1)


def test_uniforms_are_uniform():
    u = rng.words_to_uniform(rng.philox_words(1, 0, 200_000), torch.float64)
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    counts = torch.histc(u, bins=10, min=0, max=1)
    expected = u.numel() / 10
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 40  # 9 degrees of freedom; p < 1e-5 beyond this


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(3)
    a = [int(rng.draw_seed()) for _ in range(3)]
    torch.manual_seed(3)
    b = [int(rng.draw_seed()) for _ in range(3)]
    assert a == b and len(set(a)) == 3
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert int(rng.draw_seed(g1)) == int(rng.draw_seed(g2))


def test_draw_seed_uses_all_64_bits():
    torch.manual_seed(0)
    seeds = [rng.signed_to_seed(int(rng.draw_seed())) for _ in range(64)]
    assert any(s >= 2**63 for s in seeds)
    assert any((s >> 32) != 0 and (s & 0xFFFFFFFF) != 0 for s in seeds)


def test_signed_round_trip():
    for s in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert rng.signed_to_seed(rng.seed_to_signed(s)) == s
        assert -(2**63) <= rng.seed_to_signed(s) < 2**63


def test_derive_seed_is_stable_and_distinct():
    a = rng.derive_seed(1, "layer.0")
    assert a == rng.derive_seed(1, "layer.0")
    others = {rng.derive_seed(2, "layer.0"), rng.derive_seed(1, "layer.1"), rng.derive_seed(1, "layer", 0)}
    assert len({a} | others) == 4
    assert 0 <= a < 2**64


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "1", None, True])
def test_bad_seeds(bad):
    with pytest.raises((ValueError, TypeError), match="seed"):
        rng.check_seed(bad)
    with pytest.raises((ValueError, TypeError)):
        rng.philox_words(bad, 0, 4)


@pytest.mark.parametrize(
    "counter,key", [((0, 0, 0), (0, 0)), ((0, 0, 0, 2**32), (0, 0)), ((0, 0, 0, 0), (-1, 0))]
)
def test_bad_philox_words(counter, key):
    with pytest.raises(ValueError):
        rng.philox4x32(counter, key)


def test_docs_vectors():
    """The test-vector table of docs/rng.md agrees with the scalar generator."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "rng.md").read_text()
    section = text.split("## Test vectors", 1)[1].split("Masks and outputs", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [r for r in (line.strip("| ").split(" | ") for line in lines) if r[0].isdigit()]
    assert len(rows) == 4
    for seed, offset, words in rows:
        expected = [_word(int(seed), int(offset), i) for i in range(8)]
        assert [int(w, 16) for w in words.split()] == expected
