"""MC dropout from the real uncertainty libraries on a model patched by dropkit.

Baal's ``MCDropoutModule`` and torch-uncertainty's ``mc_dropout`` find dropout by torch's
classes (``nn.Dropout`` / ``_DropoutNd``). dropkit's layers are instances of those classes, so
both libraries find them after ``patch()`` as they find torch's own, and the T stochastic
passes differ. Each check runs on the unpatched model too, as the control: the same library,
the same model, torch's layers.
"""

import pytest
import torch
from interop_helpers import real
from torch import nn

import dropkit
from dropkit.patch import dropout_layers, patch

SAMPLES, BATCH = 16, 5

# Both libraries select dropout with isinstance on torch's classes; the checks on a patched
# model hold exactly when dropkit's layers are instances of them.
needs_torch_classes = pytest.mark.xfail(
    not issubclass(dropkit.Dropout, nn.Dropout), reason="dropkit.Dropout is not an nn.Dropout", strict=True
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(32, 3))


def inputs():
    return torch.randn(BATCH, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "patched", [pytest.param(True, marks=needs_torch_classes), False], ids=["patched", "torch"]
)
def test_baal_mc_dropout_module(patched):
    baal_dropout = real("baal.bayesian.dropout")
    model = mlp()
    if patched:
        patch(model, seed=0)
        assert all(type(model[i]) is dropkit.Dropout for i in (2, 5))
    rates = [layer.p for layer in dropout_layers(model)]
    wrapped = baal_dropout.MCDropoutModule(model).eval()
    # Baal swaps every nn.Dropout it finds for its always-on copy with the same rate.
    found = [m for m in wrapped.modules() if isinstance(m, baal_dropout.Dropout)]
    assert [m.p for m in found] == rates == [0.3, 0.3]
    x = inputs()
    with torch.no_grad():
        samples = torch.stack([wrapped(x) for _ in range(SAMPLES)])
    assert samples.var(dim=0).min() > 0


@pytest.mark.parametrize(
    "patched", [pytest.param(True, marks=needs_torch_classes), False], ids=["patched", "torch"]
)
def test_torch_uncertainty_mc_dropout(patched):
    methods = real("torch_uncertainty.methods")
    model = mlp()
    if patched:
        patch(model, seed=0)
    wrapped = methods.mc_dropout(model, num_estimators=SAMPLES, on_batch=False).eval()
    assert len(wrapped.filtered_modules) == 2 and all(m.training for m in wrapped.filtered_modules)
    x = inputs()
    with torch.no_grad():
        samples = wrapped(x).reshape(SAMPLES, BATCH, 3)
    assert samples.var(dim=0).min() > 0
    if patched:
        # The masks come from dropkit's seeded streams, not from torch's generator: the same
        # stream positions give the same samples whatever torch's seed.
        for layer in wrapped.filtered_modules:
            assert isinstance(layer, dropkit.Dropout)
            layer.offset.zero_()
        torch.manual_seed(123)
        with torch.no_grad():
            again = wrapped(x).reshape(SAMPLES, BATCH, 3)
        assert torch.equal(again, samples)
