"""What backward keeps for each fused layer: 1 bit per mask entry (docs/family.md's table)."""

import math

import pytest
import torch

import dropkit


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    total = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        total.append(t.numel() * t.element_size())
        return t

    x = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    return sum(total)


X4 = (8, 16, 24, 24)
CASES = {
    # layer, input shape, mask entries (one bit each)
    "Dropout": (lambda: dropkit.Dropout(0.1, seed=0), X4, math.prod(X4)),
    "shared dims": (lambda: dropkit.Dropout(0.1, shared_dims=(0, 3), seed=0), X4, 16 * 24),
    "Dropout2d": (lambda: dropkit.Dropout2d(0.1, seed=0), X4, 8 * 16),
    "channels_last Dropout2d": (lambda: dropkit.Dropout2d(0.1, channels_last=True, seed=0), X4, 8 * 24),
    "LockedDropout": (lambda: dropkit.LockedDropout(0.1, seed=0), (200, 4, 128), 4 * 128),
    "AlphaDropout": (lambda: dropkit.AlphaDropout(0.1, seed=0), X4, math.prod(X4)),
    "FeatureAlphaDropout": (lambda: dropkit.FeatureAlphaDropout(0.1, seed=0), X4, 8 * 16),
    "DropBlock2d": (lambda: dropkit.DropBlock2d(0.1, 5, seed=0), X4, math.prod(X4)),
    "DropBlock2d shared": (lambda: dropkit.DropBlock2d(0.1, 5, shared_channels=True, seed=0), X4, 8 * 576),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_keeps_one_bit_per_mask_entry(name):
    factory, shape, entries = CASES[name]
    assert saved_bytes(factory(), torch.randn(shape)) <= math.ceil(entries / 8) + 16


def test_the_gradient_of_a_fused_broadcast_mask_is_the_mask():
    x = torch.randn(X4, dtype=torch.float64, requires_grad=True)
    layer = dropkit.Dropout2d(0.3, seed=4)
    layer(x).backward(torch.ones(X4, dtype=torch.float64))
    keep = dropkit.dropout_mask((8, 16, 1, 1), 0.3, seed=4)
    assert torch.equal(x.grad, (keep.to(torch.float64) * (1 / 0.7)).expand(X4))
    small = x[:2, :2, :3, :3].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: dropkit.Dropout2d(0.3, seed=4)(t), (small,))


def test_layers_with_per_sample_masks_keep_nothing_and_shared_dims_keep_bits():
    # DropPath, channel and locked dropout draw their few words again in backward; Dropout with
    # shared_dims keeps 1 bit per mask entry (its mask_storage).
    for shape in [(4, 8, 16), (8, 16, 24, 24)]:
        assert saved_bytes(dropkit.DropPath(0.1, seed=0), torch.randn(shape)) == 0
    assert saved_bytes(dropkit.Dropout1d(0.1, seed=0), torch.randn(4, 9, 16)) == 0
    assert saved_bytes(dropkit.Dropout2d(0.1, seed=0, channels_last=True), torch.randn(X4)) == 0
    assert saved_bytes(dropkit.LockedDropout(0.1, seed=0), torch.randn(20, 4, 9)) == 0
    shared = dropkit.Dropout(0.1, shared_dims=(2,), seed=0)
    assert saved_bytes(shared, torch.randn(4, 9, 16)) == math.ceil(4 * 9 / 8)


def test_drop_path_gradients_are_the_mask_to_every_order():
    x = torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True)
    layer = dropkit.DropPath(0.4, seed=3)
    layer(x).backward(torch.ones_like(x))
    keep = dropkit.dropout_mask((6, 1, 1), 0.4, seed=3)
    assert torch.equal(x.grad, (keep.to(torch.float64) / 0.6).expand_as(x))
    fresh = x.detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: dropkit.DropPath(0.4, seed=3)(t), (fresh,))
