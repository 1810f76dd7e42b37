
import pytest
import torch
from torch import nn

import dropkit
from dropkit.lab import measure
from dropkit.lab.tasks import UnknownTaskError, available_tasks, get_task, make_dropout


def test_registry_lists_this_rounds_tasks_and_rejects_unknown_names():
    assert {"digits", "mnist1d", "breast-cancer", "diabetes"} <= set(available_tasks())
    with pytest.raises(UnknownTaskError, match=r"unknown task 'mnist'; expected one of \["):
        get_task("mnist")
    with pytest.raises(UnknownTaskError, match="unknown dropout variant 'block'"):
        make_dropout("block", 0.1, "dense")


@pytest.mark.parametrize("name", ["digits", "mnist1d", "breast-cancer", "diabetes"])
def test_each_task_loads_and_its_model_fits_the_data(name):
    task = get_task(name)
    assert task.data_status(None).present
    data = task.load(None)
    assert len(data.x_train) == len(data.y_train) and len(data.x_test) == len(data.y_test)
    model = task.build_model(0.5)
    assert isinstance(model.head, nn.Linear)
    assert any(isinstance(m, dropkit.Dropout) and m.p == 0.5 for m in model.modules())
    out = model.eval()(data.x_test[:7])
    classes = int(data.y_train.max()) + 1 if task.kind == "classification" else 1
    assert out.shape == (7, classes)
    assert task.loss(out, data.y_test[:7]).isfinite()


def test_digits_uses_channel_dropout_after_convolutions():
    model = get_task("digits").build_model(0.3)
    assert any(isinstance(m, dropkit.Dropout2d) for m in model.modules())
    elementwise = get_task("digits").build_model(0.3, "elementwise")
    assert not any(isinstance(m, dropkit.Dropout2d) for m in elementwise.modules())


def _fitted(p):
    task = get_task("breast-cancer")
    data = task.load(None)
    torch.manual_seed(0)
    model = task.build_model(p)
    return task, data, model.eval()


def test_ablation_curve_starts_at_the_eval_metric_and_ends_at_chance_when_all_units_go():
    task, data, model = _fitted(0.5)
    curve = measure.ablation_curve(task, model, data, fractions=(0.0, 1.0))
    assert curve["metric"][0] == task.score(model(data.x_test), data.y_test)
    # All units zeroed: the output is the head's bias alone, one class for every patient.
    majority = max((data.y_test == c).float().mean().item() for c in (0, 1))
    minority = 1 - majority
    assert curve["metric"][1] in (pytest.approx(majority), pytest.approx(minority))


def test_mc_vs_weight_scaling_needs_active_dropout():
    task, data, model = _fitted(0.0)
    assert "not_measured" in measure.mc_vs_weight_scaling(task, model, data, samples=3)
    task, data, model = _fitted(0.5)
    result = measure.mc_vs_weight_scaling(task, model, data, samples=5)
    assert set(result["mc"]) == {"1", "2", "5"}
    assert model.training is False  # MC mode was undone


def test_bn_variance_shift_sees_dropout_before_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8192, 16)
    for p, expected in ((0.5, 2.0), (0.0, 1.0)):
        model = nn.Sequential(dropkit.Dropout(p), nn.BatchNorm1d(16, momentum=None))
        model.head = nn.Identity()
        model.train()
        with torch.no_grad():
            for batch in x.split(512):
                model(batch)
        (layer,) = measure.bn_variance_shift(model, x)
        # Inverted dropout at p doubles E[x^2] at p=0.5: train-time variance 2 vs test 1.
        # Estimation error of a variance from 8192x16 samples is ~0.4%; 0.05 is > 10 sigma.
        assert layer["ratio"] == pytest.approx(expected, abs=0.05)
        assert layer["after_dropout"] is True  # structural: a Dropout(0) still sits there


def test_library_is_called_directly_and_its_bugs_fail_loudly(monkeypatch):
    task, data, model = _fitted(0.5)
    real = measure._library_co_adaptation(model, data.x_test)
    expected = dropkit.analysis.co_adaptation(model, model.hidden, data.x_test)
    assert real["mean_abs_correlation"] == pytest.approx(expected.mean_abs_correlation)
    assert real["effective_rank"] == pytest.approx(expected.effective_rank)
    assert 0.0 <= real["fraction_inactive"] <= 1.0

    def broken(*args, **kwargs):
        raise TypeError("bug in co_adaptation")

    # A bug (or a changed signature) is an error, never a "not measured" note in a report.
    with monkeypatch.context() as patch:
        patch.setattr(dropkit.analysis, "co_adaptation", broken)
        with pytest.raises(TypeError, match="bug in co_adaptation"):
            measure._library_co_adaptation(model, data.x_test)
    # "Not measured" only for a reason the report states: here, no .hidden block.
    monkeypatch.setattr(measure, "_feature_layer", lambda model: None)
    assert measure._library_co_adaptation(model, data.x_test) == {
        "not_measured": "the model has no .hidden block feeding its head"}
    # Without a .hidden block the lab's own ablation curve (on the head's input) measures.
    curve = measure._library_ablation(task, model, data, seed=0)
    assert "no .hidden block" in curve["source"]
    assert len(curve["metric"]) == len(measure.ABLATION_FRACTIONS)



@pytest.mark.parametrize("name", ["breast-cancer", "diabetes"])
def test_uncertainty_is_calibrated_and_covered_on_the_validation_split(name):
    """Issue 13, item 6: temperature scaling and conformal sets/intervals at alpha = 0.1,
    fitted on the validation split and measured on the test set."""
    task = get_task(name)
    data = task.load(None)
    torch.manual_seed(0)
    model = task.build_model(0.5).eval()
    out = measure._library_uncertainty(task, model, data, samples=8, seed=0, tau=1.0)
    conformal = out["conformal"]
    assert conformal["alpha"] == 0.1 and conformal["calibration_examples"] == len(data.y_val)
    # Marginal coverage >= 0.9 over calibration and test draws; with ~60-70 calibration
    # and >= 133 test examples, 4 standard deviations of both binomial terms is < 0.17.
    assert 0.73 <= conformal["coverage"] <= 1.0
    if task.kind == "classification":
        assert out["temperature"] > 0
        after = out["after_temperature"]
        assert sum(after["reliability"]["count"]) == len(data.y_test)
        assert 0.0 <= after["ece"] <= 1.0 and after["nll"] > 0
        assert 1.0 <= conformal["mean_set_size"] <= 2.0
    else:
        assert conformal["mean_width"] > 0
