import math

import pytest
import torch
from torch import nn

from dropkit import analysis


class _Tap(nn.Module):
    """Identity with a named layer to measure: the data *are* the activations."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        return self.units(x)


# --------------------------------------------------------------------------- co-adaptation


def test_duplicated_units_are_fully_co_adapted():
    base = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    acts = torch.cat([base, 2 * base, -base, base + 3], dim=1)
    stats = analysis.co_adaptation(_Tap(), "units", acts)
    assert stats.mean_abs_correlation == pytest.approx(1.0)
    assert stats.effective_rank == pytest.approx(1.0, abs=1e-6)
    assert (stats.units, stats.dead_units) == (4, 0)


def test_independent_units_are_not_co_adapted():
    acts = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    stats = analysis.co_adaptation(_Tap(), "units", acts)
    # |corr| of independent units over n samples has mean sqrt(2 / (pi n)) = 0.0126
    # and std ~0.0095 for n = 4000; 28 pairs average it, so 0.03 is far outside.
    assert stats.mean_abs_correlation < 0.03
    # Equal singular values give rank 8; sampling spreads them by ~sqrt(8/4000).
    assert 7.9 < stats.effective_rank <= 8.0


def test_dead_units_are_counted_and_left_out_of_the_correlation():
    acts = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    acts[:, 1] = 0.0
    acts[:, 3] = 2.5
    stats = analysis.co_adaptation(_Tap(), "units", acts)
    assert stats.dead_units == 2
    assert not math.isnan(stats.mean_abs_correlation)


def test_channels_of_a_conv_output_are_the_units():
    acts = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    acts[:, 2] = acts[:, 0]  # channel 2 copies channel 0 at every position
    stats = analysis.co_adaptation(_Tap(), "units", acts)
    assert stats.units == 3
    # Pairs (0,2): |corr| = 1; (0,1), (1,2): near 0 over 160 positions.
    assert 1 / 3 < stats.mean_abs_correlation < 1 / 3 + 0.2


# --------------------------------------------------------------------------- ablation


def _summing_classifier() -> nn.Module:
    # Class 1 iff the sum of the 10 units exceeds 0.5; every unit is 1 on class-1 inputs.
    classifier = nn.Linear(10, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.stack([torch.zeros(10), torch.ones(10)]))
        classifier.bias.copy_(torch.tensor([0.5, 0.0]))
    return nn.Sequential(nn.Identity(), classifier)


def test_ablation_curve_zeroes_the_requested_fraction_of_units():
    model = _summing_classifier()
    x = torch.cat([torch.ones(5, 10), torch.zeros(5, 10)])
    y = torch.tensor([1] * 5 + [0] * 5)
    curve = analysis.ablation_curve(model, "0", (x, y), fractions=(0.0, 0.5, 0.9, 1.0), trials=3)
    # Sum of kept units: 10, 5, 1, 0 -> class 1 is predicted until every unit is gone.
    assert curve.mean.tolist() == [1.0, 1.0, 1.0, 0.5]
    assert curve.std.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert curve.area == pytest.approx((1.0 * 0.9 + 0.75 * 0.1) / 1.0)


def test_ablation_is_reproducible_and_restores_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).train()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    first = analysis.ablation_curve(model, "1", (x, y), trials=4, seed=7)
    again = analysis.ablation_curve(model, model[1], (x, y), trials=4, seed=7)
    assert torch.equal(first.mean, again.mean) and torch.equal(first.std, again.std)
    assert model.training and not model[1]._forward_hooks


def test_ablation_accepts_a_loader_and_a_custom_metric():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    whole = analysis.ablation_curve(model, "1", (x, y), fractions=(0.0, 0.5), metric="loss")
    batched = analysis.ablation_curve(model, "1", loader, fractions=(0.0, 0.5), metric="loss")
    assert torch.allclose(whole.mean, batched.mean)
    custom = analysis.ablation_curve(
        model, "1", (x, y), fractions=(0.0,), metric=lambda out, tgt: float(out.shape[0])
    )
    assert custom.mean.tolist() == [64.0]


# --------------------------------------------------------------------------- sparsity and gap


def test_activation_sparsity_counts_inactive_units():
    acts = torch.tensor([[0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    sparsity = analysis.activation_sparsity(_Tap(), "units", acts)
    assert sparsity.fraction_inactive == pytest.approx(4 / 8)
    assert sparsity.mean_activation == pytest.approx(8 / 8)
    assert sparsity.unit_means.tolist() == [0.0, 0.5, 1.0, 2.5]
    assert analysis.activation_sparsity(_Tap(), "units", acts, threshold=1.0).fraction_inactive == (
        pytest.approx(5 / 8)
    )


def test_generalization_gap_for_accuracy_and_loss():
    model = _summing_classifier()
    x_train, y_train = torch.ones(4, 10), torch.tensor([1, 1, 1, 1])
    x_test, y_test = torch.ones(4, 10), torch.tensor([1, 1, 0, 0])
    gap = analysis.generalization_gap(model, (x_train, y_train), (x_test, y_test))
    assert (gap.train, gap.test, gap.gap) == (1.0, 0.5, 0.5)
    loss = analysis.generalization_gap(model, (x_train, y_train), (x_test, y_test), metric="loss")
    assert loss.test > loss.train and loss.gap == pytest.approx(loss.test - loss.train)


# --------------------------------------------------------------------------- bad input


def test_bad_arguments_are_explained():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"no submodule 'relu'; it has \['0', '1'\]"):
        analysis.co_adaptation(model, "relu", x)
    with pytest.raises(ValueError, match="layer Linear is not part of the model"):
        analysis.co_adaptation(model, nn.Linear(4, 4), x)
    with pytest.raises(ValueError, match="unit_dim=0 is the batch dimension"):
        analysis.co_adaptation(model, "1", x, unit_dim=0)
    with pytest.raises(ValueError, match=r"fractions have to be .* but got \[0.0, 1.5\]"):
        analysis.ablation_curve(model, "1", (x, torch.zeros(8)), fractions=(0.0, 1.5))
    with pytest.raises(ValueError, match="metric has to be 'accuracy', 'loss' .* got 'f1'"):
        analysis.generalization_gap(model, (x, torch.zeros(8)), (x, torch.zeros(8)), metric="f1")
    with pytest.raises(ValueError, match="data needs targets"):
        analysis.generalization_gap(model, x, x)
    with pytest.raises(ValueError, match="same length, but got 8 and 3"):
        analysis.generalization_gap(model, (x, torch.zeros(3)), (x, torch.zeros(8)))
    with pytest.raises(TypeError, match="data has to be a tensor, .* got int"):
        analysis.activation_sparsity(model, "1", 5)


# --------------------------------------------------------------------------- a real task


@pytest.fixture(scope="module")
def digits_models():
    """The same MLP trained on scikit-learn's digits with and without dropout (p=0.5)."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, train_size=500, random_state=0, stratify=y
    )
    models = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        # torch.nn.Dropout: the measurements do not care whose dropout trained the
        # model, and the core's reference (pure-torch Philox) path is ~50x slower per
        # call on this machine (2026-11-25), which would dominate the suite's time.
        model = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Dropout(p),
            nn.Linear(128, 128), nn.ReLU(), nn.Dropout(p),
            nn.Linear(128, 10),
        )
        optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
        model.train()
        for _ in range(30):
            for batch in torch.randperm(len(x_train)).split(50):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimiser.step()
        models[p] = model.eval()
    return models, (x_train, y_train), (x_test, y_test)


def test_dropout_lowers_co_adaptation_on_digits(digits_models):
    models, _, (x_test, _) = digits_models
    for layer in ("1", "4"):  # the two ReLU outputs
        plain = analysis.co_adaptation(models[0.0], layer, x_test)
        dropped = analysis.co_adaptation(models[0.5], layer, x_test)
        # Measured 2026-11-25 with this recipe and seeds 0/1/2: dropout lowers mean |corr|
        # by 0.020/0.036/0.037 (layer 1) and 0.014/0.037/0.037 (layer 4) and raises the
        # effective rank by x1.25-1.43. Margins: half the smallest measured effect.
        assert dropped.mean_abs_correlation < plain.mean_abs_correlation - 0.007
        assert dropped.effective_rank > 1.12 * plain.effective_rank


def test_dropout_flattens_the_ablation_curve_on_digits(digits_models):
    models, _, (x_test, y_test) = digits_models
    for layer in ("1", "4"):
        plain = analysis.ablation_curve(models[0.0], layer, (x_test, y_test), trials=3)
        dropped = analysis.ablation_curve(models[0.5], layer, (x_test, y_test), trials=3)
        # Intact accuracy differs by < 1% (measured 0.5-1.0%), so the area difference is
        # robustness. Measured (seeds 0/1/2) area gains 0.076-0.089 (layer 1) and
        # 0.053-0.075 (layer 4); accuracy with 80% of units gone +0.20-0.26 and
        # +0.14-0.16. Margins: half the smallest measured effect.
        assert abs(dropped.mean[0] - plain.mean[0]) < 0.03
        assert dropped.area > plain.area + 0.025
        assert dropped.mean[8] > plain.mean[8] + 0.07


def test_dropout_makes_activations_sparser_on_digits(digits_models):
    models, (x_train, y_train), (x_test, y_test) = digits_models
    plain = analysis.activation_sparsity(models[0.0], "1", x_test)
    dropped = analysis.activation_sparsity(models[0.5], "1", x_test)
    # Srivastava et al. (2014) s.7.2. Measured (seeds 0/1/2): +30-33 points of inactive
    # units, mean activation x0.38-0.40. Margins: half the effect.
    assert dropped.fraction_inactive > plain.fraction_inactive + 0.15
    assert dropped.mean_activation < 0.7 * plain.mean_activation
    gap = analysis.generalization_gap(models[0.5], (x_train, y_train), (x_test, y_test))
    assert gap.test > 0.9 and gap.gap == pytest.approx(gap.train - gap.test)
