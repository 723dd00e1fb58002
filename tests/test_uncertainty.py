"""dropkit.uncertainty against hand-computed values, direct formulas and the stream contract."""

import math
import warnings

import pytest
import torch
from torch import nn

import dropkit
from dropkit.app.models import SimpleModelWithDropout
from dropkit.functional import dropout_mask
from dropkit.rng import derive_seed
from dropkit.uncertainty import (
    brier_score,
    classification_summary,
    expected_calibration_error,
    gal_log_likelihood,
    gal_tau,
    mc_dropout,
    mc_predict,
    mc_probs,
    negative_log_likelihood,
    plot_reliability_diagram,
    regression_summary,
    reliability_diagram,
    unswitchable_modules,
)

pytestmark = pytest.mark.filterwarnings("ignore:dropkit. backend:RuntimeWarning")


def bn_model(dropout=dropkit.Dropout):
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), dropout(0.5), nn.Linear(8, 3))


# --- classification summary -------------------------------------------------------------------


def test_two_one_hot_passes_on_different_classes_give_mi_ln2():
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    s = classification_summary(probs)
    assert s.mutual_information.item() == pytest.approx(math.log(2), abs=1e-6)
    assert s.predictive_entropy.item() == pytest.approx(math.log(2), abs=1e-6)
    assert s.expected_entropy.item() == pytest.approx(0.0, abs=1e-7)
    assert s.variation_ratio.item() == pytest.approx(0.5)
    assert s.mean_probs.tolist() == [[0.5, 0.5, 0.0]]


def test_classification_summary_matches_direct_loops():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(7, 4, 5, dtype=torch.float64) * 2, -1)
    s = classification_summary(probs)
    T, N, C = probs.shape
    for n in range(N):
        mean = [sum(probs[t, n, c].item() for t in range(T)) / T for c in range(C)]
        h = -sum(m * math.log(m) for m in mean)
        cells = [probs[t, n, c].item() for t in range(T) for c in range(C)]
        eh = -sum(v * math.log(v) for v in cells) / T
        votes = [int(probs[t, n].argmax()) for t in range(T)]
        vr = 1 - max(votes.count(c) for c in range(C)) / T
        assert s.predictive_entropy[n].item() == pytest.approx(h)
        assert s.expected_entropy[n].item() == pytest.approx(eh)
        assert s.mutual_information[n].item() == pytest.approx(h - eh)
        assert s.variation_ratio[n].item() == pytest.approx(vr)
        assert s.predicted[n].item() == max(range(C), key=lambda c: mean[c])


# --- regression ---------------------------------------------------------------------------------


def test_gal_ll_with_one_pass_is_the_gaussian_log_density():
    yhat = torch.tensor([[0.3, -1.2, 2.0]])
    y = torch.tensor([0.0, -1.0, 3.5])
    tau = 2.5
    pairs = zip(y.tolist(), yhat[0].tolist(), strict=True)
    direct = [-0.5 * math.log(2 * math.pi / tau) - 0.5 * tau * (a - b) ** 2 for a, b in pairs]
    assert gal_log_likelihood(yhat, y, tau) == pytest.approx(sum(direct) / 3, rel=1e-12)


def test_gal_ll_is_the_log_of_the_mixture_density():
    torch.manual_seed(1)
    yhat, y, tau = torch.randn(4, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64), 0.7
    dens = torch.distributions.Normal(yhat, tau**-0.5).log_prob(y).exp().mean(0)
    assert gal_log_likelihood(yhat, y, tau) == pytest.approx(dens.log().mean().item(), rel=1e-10)


def test_gal_tau_formula():
    assert gal_tau(0.5, 0.1, 1000, 1e-4) == pytest.approx(0.25 * 0.9 / (2 * 1000 * 1e-4))


def test_regression_summary_homo_and_heteroscedastic():
    out = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]])  # T=3, N=2
    s = regression_summary(out, tau=2.0)
    assert s.mean.tolist() == pytest.approx([3.0, 1.0])
    assert s.epistemic_variance.tolist() == pytest.approx([14 / 3, 2.0])  # population variances
    assert s.total_variance.tolist() == pytest.approx([14 / 3 + 0.5, 2.5])
    assert regression_summary(out).total_variance.tolist() == pytest.approx([14 / 3, 2.0])
    logvar = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]))
    h = regression_summary(torch.stack([out, logvar], -1), heteroscedastic=True)
    assert h.mean.tolist() == pytest.approx([3.0, 1.0])
    assert h.aleatoric_variance.tolist() == pytest.approx([3.0, 5.0])
    assert h.total_variance.tolist() == pytest.approx([14 / 3 + 3.0, 7.0])


# --- calibration ------------------------------------------------------------------------------


def test_ece_nll_brier_on_a_constructed_case():
    probs = torch.tensor([[0.95, 0.05], [0.58, 0.42], [0.45, 0.55], [0.1, 0.9], [0.72, 0.28]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    # confidences 0.95, 0.58, 0.55, 0.9, 0.72; correct 1, 0, 1, 1, 1; 5 bins of width 0.2:
    # (0.4, 0.6]: {0.58, 0.55}, acc 1/2, conf 0.565; (0.6, 0.8]: {0.72}; (0.8, 1]: {0.95, 0.9}.
    ece = (2 * abs(0.5 - 0.565) + abs(1 - 0.72) + 2 * abs(1 - 0.925)) / 5
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(ece, abs=1e-6)
    d = reliability_diagram(probs, labels, n_bins=5)
    assert d.counts.tolist() == [0, 0, 2, 1, 2]
    assert d.accuracy[2:].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert math.isnan(d.accuracy[0].item())
    nll = -sum(math.log(v) for v in [0.95, 0.42, 0.55, 0.9, 0.72]) / 5
    assert negative_log_likelihood(probs, labels) == pytest.approx(nll, rel=1e-6)
    brier = sum(2 * (1 - v) ** 2 for v in [0.95, 0.42, 0.55, 0.9, 0.72]) / 5
    assert brier_score(probs, labels) == pytest.approx(brier, rel=1e-6)


def test_plot_reliability_diagram():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    ax = plot_reliability_diagram(reliability_diagram(probs, torch.tensor([0, 0])))
    assert ax.get_title() == "ECE = 0.450"


# --- mc_dropout -------------------------------------------------------------------------------


def test_mc_dropout_leaves_batchnorm_alone_and_restores_flags():
    torch.manual_seed(0)
    model = bn_model()
    model(torch.randn(16, 6))  # give BatchNorm non-trivial running statistics
    model.eval()
    model[4].train()  # an unusual mix of flags must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model[1].state_dict().items()}
    with mc_dropout(model) as handle:
        assert handle.enabled == ["3"]
        assert model[3].training and not model[1].training and not model.training
        mc_predict(model, torch.randn(10, 6), samples=4)
    assert {n: m.training for n, m in model.named_modules()} == before
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_mc_dropout_restores_after_an_exception_and_as_a_function():
    model = bn_model(nn.Dropout).eval()
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(model):
        assert model[3].training
        raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())
    handle = mc_dropout(model)
    assert model[3].training
    handle.restore()
    assert not model[3].training
    with pytest.raises(RuntimeError):  # shape error inside the passes
        mc_predict(model, torch.randn(4, 5))
    assert not any(m.training for m in model.modules())


def test_mc_dropout_restores_flags_when_its_warning_is_raised_as_an_error():
    # Under warnings-as-errors (pytest -W error) the warning aborts mc_dropout before the with
    # block is entered; every flag must still be the one the model had before.
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.MultiheadAttention(4, 1, dropout=0.1)).eval()
    before = [m.training for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="cannot switch on"), mc_dropout(model):
            pass
        with pytest.raises(UserWarning, match="cannot switch on"):
            mc_predict(model, torch.randn(3, 4), samples=2)
    assert [m.training for m in model.modules()] == before


def test_mc_dropout_warns_about_functional_dropout():
    class Custom(nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.2, training=self.training)

    model = nn.Sequential(nn.MultiheadAttention(4, 1, dropout=0.1), Custom(), dropkit.Dropout(0.1))
    assert unswitchable_modules(model) == ["0", "1"]
    with pytest.warns(UserWarning, match="'0', '1'"), mc_dropout(model):
        pass
    with pytest.warns(UserWarning, match="no dropout module"), mc_dropout(nn.Linear(2, 2)):
        pass
    with pytest.raises(TypeError, match="list"):
        mc_dropout([])


# --- mc_predict -------------------------------------------------------------------------------


def test_chunked_replication_keeps_rows_in_order():
    model = nn.Sequential(nn.Linear(3, 2), dropkit.Dropout(0.0)).eval()
    x = torch.randn(5, 3)
    ref = model(x).detach()
    for batched in (True, False):
        for max_batch in (None, 1, 4, 7, 100):
            out = mc_predict(model, x, samples=3, batched=batched, max_batch=max_batch)
            assert out.shape == (3, 5, 2)
            assert torch.allclose(out, ref.expand(3, 5, 2))


@pytest.mark.parametrize("dropout", [dropkit.Dropout, nn.Dropout])
def test_batched_and_loop_give_the_same_distribution(dropout):
    p, T = 0.3, 400
    model = nn.Sequential(dropout(p)).eval()
    x = torch.ones(3, 50)
    for batched in (True, False):
        out = mc_predict(model, x, samples=T, batched=batched, max_batch=500)
        kept = (out != 0).double()
        assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)))
        # 60000 Bernoulli(0.7) draws: standard error of the mean about 0.0019
        assert kept.mean().item() == pytest.approx(1 - p, abs=0.01)
        # passes are independent: the correlation between masks of consecutive passes is ~0
        a, b = kept[:-1].flatten() - 0.7, kept[1:].flatten() - 0.7
        assert abs((a * b).mean().item()) / 0.21 < 0.03


@pytest.mark.parametrize("batched", [True, False])
def test_seed_makes_results_reproducible(batched):
    torch.manual_seed(0)
    model = SimpleModelWithDropout(input_dropout=0.2).eval()
    model.input_dropout = nn.Dropout(0.2)
    seeded = dropkit.Dropout(0.5, seed=11)
    model.dropout = seeded
    x = torch.randn(9, 64)
    state = torch.get_rng_state()
    a = mc_predict(model, x, samples=6, batched=batched, max_batch=20, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert seeded.stream_state() == {"seed": 11, "offset": 0}  # the layer's stream too
    b = mc_predict(model, x, samples=6, batched=batched, max_batch=20, seed=5)
    c = mc_predict(model, x, samples=6, batched=batched, max_batch=20, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


def test_consistent_masks_follow_the_documented_streams_across_batches():
    p, seed = 0.5, 3
    model = nn.Sequential(nn.Identity(), dropkit.Dropout(p))
    x = torch.randn(10, 16)
    out = mc_predict(model, x, samples=4, seed=seed, consistent=True)
    for t in range(4):
        mask = dropout_mask((1, 16), p, seed=derive_seed(seed, "consistent", t, "1"))
        assert torch.equal(out[t], torch.where(mask, x * 2, torch.zeros(())))
    assert not torch.equal(out[0], out[1])
    part = mc_predict(model, x[6:], samples=4, seed=seed, consistent=True)
    chunked = mc_predict(model, x, samples=4, seed=seed, consistent=True, max_batch=3, batched=False)
    assert torch.equal(part, out[:, 6:]) and torch.equal(chunked, out)


def test_consistent_refuses_torch_dropout_and_needs_a_seed():
    with pytest.raises(ValueError, match=r"\['3'\]"):
        mc_predict(bn_model(nn.Dropout).eval(), torch.randn(2, 6), seed=0, consistent=True)
    with pytest.raises(ValueError, match="explicit seed"):
        mc_predict(bn_model().eval(), torch.randn(2, 6), consistent=True)

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = dropkit.Dropout(0.5)

        def forward(self, x):
            return self.drop(x.t()).t()

    with pytest.raises(ValueError, match="'drop' got input"):
        mc_predict(Transposed(), torch.randn(3, 5), seed=0, consistent=True)


def test_mc_probs_are_softmax_per_pass():
    torch.manual_seed(0)
    model = SimpleModelWithDropout().eval()
    x = torch.randn(4, 64)
    probs = mc_probs(model, x, samples=5, seed=2)
    logits = mc_predict(model, x, samples=5, seed=2)
    assert torch.allclose(probs, torch.softmax(logits, -1))
    assert not torch.allclose(probs.mean(0), torch.softmax(logits.mean(0), -1))


def test_bad_inputs():
    model = SimpleModelWithDropout().eval()
    x = torch.randn(3, 64)
    for samples in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="samples"):
            mc_predict(model, x, samples=samples)
    with pytest.raises(ValueError, match="max_batch"):
        mc_predict(model, x, max_batch=0)
    with pytest.raises(ValueError, match="at least one row"):
        mc_predict(model, x[:0])
    with pytest.raises(TypeError, match="seed"):
        mc_predict(model, x, seed=1.0)
    good = torch.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match=r"\(T, N, C\)"):
        classification_summary(good[0])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_summary(torch.full((2, 3, 4), 0.2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_summary(good - 0.5)
    with pytest.raises(TypeError, match="floating"):
        classification_summary(torch.ones(2, 3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        expected_calibration_error(good[0], torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        brier_score(good[0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(good[0], torch.tensor([0, 1, 2]), n_bins=0)
    with pytest.raises(ValueError, match="tau"):
        gal_log_likelihood(torch.zeros(2, 3), torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="do not match"):
        gal_log_likelihood(torch.zeros(2, 3), torch.zeros(4), tau=1.0)
    with pytest.raises(ValueError, match="p must be in"):
        gal_tau(1.0, 1.0, 10, 1e-4)
    with pytest.raises(ValueError, match="not both"):
        regression_summary(torch.zeros(2, 3, 2), tau=1.0, heteroscedastic=True)


def test_train_mode_batchnorm_is_reported():
    model = bn_model().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mc_predict(model, torch.randn(4, 6), samples=2)
    assert any("model.eval()" in str(w.message) for w in caught)


def test_family_layers_are_switched_except_gaussian_noise():
    model = nn.Sequential(
        dropkit.Dropout2d(0.1), dropkit.DropPath(0.1), dropkit.GaussianNoise(0.1), nn.AlphaDropout(0.1)
    ).eval()
    with mc_dropout(model) as handle:
        assert handle.enabled == ["0", "1", "3"]
        assert not model[2].training


def test_batch_wide_masks_fall_back_to_the_loop():
    torch.manual_seed(0)
    model = nn.Sequential(dropkit.DropConnect(nn.Linear(8, 4), 0.5)).eval()
    x = torch.randn(3, 8)
    with pytest.warns(UserWarning, match=r"loop instead: \['0'\]"):
        out = mc_predict(model, x, samples=5, seed=0)
    # each pass draws its own weight mask: no two passes agree
    assert all(not torch.allclose(out[i], out[j]) for i in range(5) for j in range(i))
    assert torch.equal(out, mc_predict(model, x, samples=5, seed=0, batched=False))


def test_consistent_mode_with_droppath_and_dropconnect():
    torch.manual_seed(0)
    model = nn.Sequential(dropkit.DropConnect(nn.Linear(8, 8), 0.3), dropkit.DropPath(0.5)).eval()
    x = torch.randn(12, 8)
    out = mc_predict(model, x, samples=6, seed=4, consistent=True)
    part = mc_predict(model, x[5:9], samples=6, seed=4, consistent=True)
    # same masks; a matmul over another batch size may round differently in the last bit
    assert torch.equal(part == 0, out[:, 5:9] == 0)
    assert torch.allclose(part, out[:, 5:9], rtol=1e-5, atol=1e-6)
    dropped = (out == 0).all(-1)  # DropPath drops a whole pass for every input, or none
    assert bool((dropped.all(1) | ~dropped.any(1)).all())
    assert model[1].mode == "row"
    with pytest.raises(ValueError, match=r"0 \(Dropout2d\)"):
        mc_predict(nn.Sequential(dropkit.Dropout2d(0.5)), torch.randn(2, 3, 4, 4), seed=0, consistent=True)


def test_gal_log_likelihood_is_joint_over_a_points_values():
    """(T, N, D) outputs: one isotropic Gaussian mixture per point, against scipy-free formulas."""
    torch.manual_seed(0)
    outputs, y, tau = torch.randn(5, 3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), 0.7
    expected = 0.0
    for n in range(3):
        dens = [
            math.prod(
                math.sqrt(tau / (2 * math.pi)) * math.exp(-0.5 * tau * float(y[n, d] - outputs[t, n, d]) ** 2)
                for d in range(2)
            )
            for t in range(5)
        ]
        expected += math.log(sum(dens) / 5) / 3
    assert abs(gal_log_likelihood(outputs, y, tau) - expected) < 1e-12
