import io
import math

import pytest
import torch
from torch import nn

import dropkit
from dropkit import schedule


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, 8), dropkit.Dropout(0.2), nn.ReLU(),
        nn.Linear(8, 8), nn.Dropout(0.5),
        nn.Linear(8, 2),
    )


def _rates(model: nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


def _drive(sched: schedule.RateSchedule, steps: int) -> list[float]:
    values = [sched.last_p]
    for _ in range(steps):
        values.append(sched.step())
    return values


def test_constructing_applies_step_zero_to_every_dropout_layer():
    model = _model()
    sched = schedule.Constant(model, 0.3)
    assert sched.last_step == 0
    assert _rates(model) == [0.3, 0.3]


def test_linear_ramp_values():
    sched = schedule.LinearRamp(_model(), 0.0, 0.5, steps=4)
    assert _drive(sched, 6) == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5])


def test_cosine_ramp_values():
    sched = schedule.CosineRamp(_model(), 0.1, 0.5, steps=4)
    expected = [0.5 + (0.1 - 0.5) * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(7)]
    assert _drive(sched, 6) == pytest.approx(expected)
    assert expected[2] == pytest.approx(0.3)  # halfway, by symmetry of the cosine


def test_exponential_ramp_follows_morerio_et_al():
    sched = schedule.ExponentialRamp(_model(), end=0.5, gamma=0.5)
    values = _drive(sched, 5)
    assert values == pytest.approx([0.5 * (1 - math.exp(-0.5 * t)) for t in range(6)])


def test_early_and_late_dropout_switch_at_the_given_step():
    model = _model()
    early = schedule.EarlyDropout(model, p=0.1, until=3)
    assert _drive(early, 4) == [0.1, 0.1, 0.1, 0.0, 0.0]
    assert _rates(model) == [0.0, 0.0]
    late = schedule.LateDropout(model, p=0.3, start=2)
    assert _drive(late, 3) == [0.0, 0.0, 0.3, 0.3]
    assert _rates(model) == [0.3, 0.3]


def test_step_schedule_boundaries_are_inclusive_starts():
    sched = schedule.Step(_model(), boundaries=[2, 4], values=[0.1, 0.2, 0.3])
    assert _drive(sched, 5) == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]


def test_step_with_explicit_value_jumps_like_an_lr_scheduler():
    model = _model()
    sched = schedule.LinearRamp(model, 0.0, 0.4, steps=10)
    assert sched.step(5) == pytest.approx(0.2)
    assert sched.step() == pytest.approx(0.24)
    assert _rates(model) == pytest.approx([0.24, 0.24])


def test_relative_schedule_scales_each_layers_own_rate():
    model = _model()  # rates 0.2 and 0.5
    sched = schedule.LinearRamp(model, 0.0, 1.0, steps=2, relative=True)
    assert _rates(model) == [0.0, 0.0]
    sched.step()
    assert _rates(model) == pytest.approx([0.1, 0.25])
    sched.step()
    assert _rates(model) == pytest.approx([0.2, 0.5])


def test_types_restrict_the_layers_driven():
    model = _model()
    schedule.Constant(model, 0.05, types=dropkit.Dropout)
    assert _rates(model) == [0.05, 0.5]  # the torch.nn.Dropout keeps its rate


@pytest.mark.parametrize(
    "make",
    [
        lambda m: schedule.Constant(m, 0.3),
        lambda m: schedule.LinearRamp(m, 0.0, 0.5, steps=7),
        lambda m: schedule.CosineRamp(m, 0.5, 0.1, steps=7, relative=True),
        lambda m: schedule.ExponentialRamp(m, 0.5, gamma=0.3, start=0.1),
        lambda m: schedule.EarlyDropout(m, 0.2, until=4),
        lambda m: schedule.LateDropout(m, 0.2, start=4),
        lambda m: schedule.Step(m, [3, 6], [0.1, 0.2, 0.4]),
    ],
)
def test_state_dict_round_trip_resumes_the_same_rates(make):
    model = _model()
    sched = make(model)
    for _ in range(5):
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)  # as in a real checkpoint
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    expected_now = _rates(model)
    expected_next = [sched.step() for _ in range(4)]

    fresh_model = _model()
    resumed = make(fresh_model)
    resumed.load_state_dict(saved)
    assert resumed.last_step == 5
    # p is not in model.state_dict(): loading the schedule must write it back.
    assert _rates(fresh_model) == pytest.approx(expected_now)
    assert [resumed.step() for _ in range(4)] == pytest.approx(expected_next)


def test_load_state_dict_rejects_another_schedules_state():
    state = schedule.Constant(_model(), 0.3).state_dict()
    with pytest.raises(ValueError, match="'Constant', not 'LinearRamp'"):
        schedule.LinearRamp(_model(), 0.0, 0.5, steps=3).load_state_dict(state)


def test_learned_rates_are_left_alone():
    class Learned(nn.Module):
        # Stand-in for ConcreteDropout: a read-only p derived from a parameter.
        __module__ = "dropkit.nn.learned"

        def __init__(self):
            super().__init__()
            self.logit = nn.Parameter(torch.zeros(()))

        @property
        def p(self) -> float:
            return float(torch.sigmoid(self.logit.detach()))

    model = nn.Sequential(nn.Linear(2, 2), Learned(), nn.Dropout(0.5))
    schedule.Constant(model, 0.1)
    assert model[1].p == 0.5 and model[2].p == 0.1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: schedule.Constant(m, 1.5), "between 0 and 1, but got 1.5"),
        (lambda m: schedule.LinearRamp(m, 0.0, 0.5, steps=0), "steps has to be an integer >= 1"),
        (lambda m: schedule.ExponentialRamp(m, 0.5, gamma=-1.0), "gamma has to be .* got -1.0"),
        (lambda m: schedule.Step(m, [3, 2], [0.1, 0.2, 0.3]), "increase strictly"),
        (lambda m: schedule.Step(m, [3], [0.1]), "one more value than boundaries"),
        (lambda m: schedule.EarlyDropout(m, 0.1, until=-1), "until has to be .* got -1"),
    ],
)
def test_bad_arguments_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make(_model())


def test_bad_step_and_model_are_rejected():
    sched = schedule.Constant(_model(), 0.1)
    with pytest.raises(ValueError, match="step has to be an integer >= 0, but got -2"):
        sched.step(-2)
    with pytest.raises(TypeError, match="expects an nn.Module, but got str"):
        schedule.Constant("model", 0.1)
