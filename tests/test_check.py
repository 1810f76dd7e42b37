import pytest
import torch
from torch import nn

import dropkit


def _codes(findings) -> list[tuple[str, str]]:
    return [(f.code, f.module) for f in findings]


def _dropout_before_bn(p: float = 0.5) -> nn.Sequential:
    # Dropout -> Linear -> BatchNorm: the layout Li et al. (2019) analyse.
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Dropout(p),
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 4),
    )


def _dropout_after_bn() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(64, 4),
    )


def _train(model: nn.Module, steps: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A few Adam steps on a fixed labelling; returns the training data.

    Short on purpose: as training goes on, this network learns features whose
    variance dropout changes less (the shift measured here falls from ~2.3 after
    50 steps to ~1.1 after 150 steps at lr=1e-2), so a test of the fix needs a
    model early in training, where the shift is large."""
    torch.manual_seed(seed)
    x = torch.randn(512, 16)
    y = x[:, :4].argmax(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        batch = slice((step % 4) * 128, (step % 4 + 1) * 128)
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
    return x, y


def test_flags_dropout_before_batchnorm_and_measures_the_shift():
    torch.manual_seed(0)
    model = _dropout_before_bn()
    x = torch.randn(512, 16)
    findings = dropkit.check(model, x)
    assert _codes(findings) == [("dropout-before-batchnorm", "2")]
    measured = findings[0].measured
    # Inverted dropout with keep q=0.5 turns a unit's variance v with mean m into
    # (v + m^2)/q - m^2 >= 2v: the linear layer's output variance about doubles.
    # 1.5 leaves room for the sampling error of 512 samples (~6% per channel).
    assert measured["train_test_variance_ratio"] > 1.5
    assert "running_variance_shift" not in measured  # BN never trained: nothing to compare
    assert "variance shift, Li et al. 2019" in findings[0].message
    assert "recalibrate_batchnorm" in findings[0].fix


def test_without_example_input_the_order_comes_from_registration():
    findings = dropkit.check(_dropout_before_bn())
    assert _codes(findings) == [("dropout-before-batchnorm", "2")]
    assert findings[0].measured == {"downstream_batchnorms": 1.0}
    assert "pass example_input" in findings[0].message


def test_passes_a_model_with_dropout_after_the_last_batchnorm():
    model = _dropout_after_bn()
    assert dropkit.check(model) == []
    assert dropkit.check(model, torch.randn(64, 16)) == []


def test_recalibrate_batchnorm_removes_the_measured_shift():
    model = _dropout_before_bn()
    x_train, _ = _train(model)
    model.eval()
    x_test = torch.randn(2048, 16, generator=torch.Generator().manual_seed(1))
    before = dropkit.variance_shift(model, x_test)["4"]
    finding = dropkit.check(model, x_test)[0]
    assert finding.measured["running_variance_shift"] == pytest.approx(before)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    # Training with dropout left BN's running variance ~2x too large (see above).
    assert before > 1.5

    loader = [(x_train[i:i + 128], None) for i in range(0, 512, 128)]
    assert dropkit.recalibrate_batchnorm(model, loader) is model
    after = dropkit.variance_shift(model, x_test)["4"]
    # Left: sampling error only. Per-channel variances from 512 and 2048 samples
    # differ by ~sqrt(2/512 + 2/2048) = 7% (1 sigma); max(r, 1/r) averaged over
    # 64 channels then sits near 1.06, and 1.15 is > 3 sigma of that mean away.
    assert after < 1.15
    assert not model.training and model[4].momentum == 0.1
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if "num_batches" not in k)


def test_check_leaves_the_model_and_rng_as_they_were():
    model = _dropout_before_bn()
    _train(model, steps=5)
    model.train()
    model[2].eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    dropkit.check(model, torch.randn(64, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("with_input", [False, True])
def test_inplace_dropout_after_relu_is_an_error_because_backward_fails(with_input):
    model = nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.3, inplace=True), nn.Linear(4, 2)
    )
    x = torch.randn(8, 4)
    findings = dropkit.check(model, x if with_input else None)
    assert _codes(findings) == [("inplace-overwrites-saved-tensor", "2")]
    assert findings[0].severity == "error"
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        model(x).sum().backward()


def test_inplace_dropout_after_gelu_is_fine_and_not_flagged():
    # GELU's backward reads its input, not its output, so overwriting the output is safe.
    model = nn.Sequential(
        nn.Linear(4, 4), nn.GELU(), nn.Dropout(0.3, inplace=True), nn.Linear(4, 2)
    )
    x = torch.randn(8, 4)
    assert dropkit.check(model, x) == []
    model(x).sum().backward()


def test_functional_dropout_that_ignores_eval_is_caught():
    class Forgetful(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            return nn.functional.dropout(self.linear(x), 0.5)  # training defaults to True

    findings = dropkit.check(Forgetful().eval(), torch.randn(8, 4))
    assert _codes(findings) == [("random-in-eval", "<root>")]


def test_dropout_left_in_training_mode_inside_an_eval_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3)).eval()
    model[1].train()
    assert _codes(dropkit.check(model)) == [("dropout-active-in-eval", "1")]


@pytest.mark.parametrize(
    "p, expected",
    [(1.0, "error"), (0.8, "warning"), (0.05, "info"), (0.0, "info"), (0.1, None), (0.5, None)],
)
def test_rates_outside_the_usual_range(p, expected):
    findings = dropkit.check(nn.Sequential(nn.Linear(4, 4), nn.Dropout(p)))
    assert [f.severity for f in findings] == ([] if expected is None else [expected])
    if expected:
        assert findings[0].code == "rate-out-of-range" and findings[0].measured == {"p": p}


class DropPath(nn.Module):
    """timm.layers.drop.DropPath: drops whole samples."""

    __module__ = "timm.layers.drop"

    def __init__(self, drop_prob: float = 0.1):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        return x * x.new_empty((x.shape[0], 1)).bernoulli_(keep) / keep


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.drop_path = DropPath(0.2)

    def forward(self, x):
        return x + self.drop_path(self.mlp(x))


def test_drop_path_on_a_residual_branch_passes():
    model = nn.Sequential(Residual(), Residual(), nn.Linear(8, 2))
    assert dropkit.check(model, torch.randn(4, 8)) == []


def test_drop_path_on_the_main_path_is_flagged():
    model = nn.Sequential(Residual(), nn.Linear(8, 8), DropPath(0.2), nn.Linear(8, 2))
    findings = dropkit.check(model, torch.randn(4, 8))
    assert _codes(findings) == [("drop-path-not-residual", "2")]
    assert "AddmmBackward0" in findings[0].message


def test_drop_path_placement_needs_an_example_input():
    findings = dropkit.check(nn.Sequential(Residual(), nn.Linear(8, 2)))
    assert _codes(findings) == [("drop-path-unverified", "0.drop_path")]


def test_findings_are_sorted_and_printable():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.05), nn.ReLU(), nn.Dropout(1.0))
    findings = dropkit.check(model)
    assert [f.severity for f in findings] == ["error", "info"]
    text = str(findings[0])
    assert text.startswith("[error] rate-out-of-range at 3: p=1.0") and "Fix: " in text


def test_bad_inputs_are_explained():
    model = _dropout_before_bn()
    with pytest.raises(TypeError, match="check expects an nn.Module, but got int"):
        dropkit.check(3)
    with pytest.raises(TypeError, match="example_input has to be a tensor .* got dict"):
        dropkit.check(model, {"x": torch.randn(2, 16)})
    with pytest.raises(RuntimeError, match="forward failed on example_input"):
        dropkit.check(model, torch.randn(4, 7))


def test_recalibrate_rejects_models_and_loaders_it_cannot_use():
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        dropkit.recalibrate_batchnorm(nn.Linear(2, 2), [torch.randn(2, 2)])
    model = _dropout_before_bn()
    with pytest.raises(ValueError, match="loader yielded no batches"):
        dropkit.recalibrate_batchnorm(model, [])
    with pytest.raises(TypeError, match="each batch has to be a tensor .* got str"):
        dropkit.recalibrate_batchnorm(model, ["batch"])
    with pytest.raises(ValueError, match="num_batches has to be .* but got 0"):
        dropkit.recalibrate_batchnorm(model, [torch.randn(4, 16)], num_batches=0)


def test_check_restores_running_statistics_of_other_norm_layers():
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3), nn.Dropout1d(0.2), nn.InstanceNorm1d(4, track_running_stats=True)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dropkit.check(model, torch.randn(8, 3, 10))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
