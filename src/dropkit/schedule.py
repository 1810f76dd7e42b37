"""Dropout rate schedules: change ``p`` of a model's dropout layers over training.

Each schedule works like a ``torch.optim.lr_scheduler``: construct it on a model
(it applies the value of step 0 at once), call :meth:`RateSchedule.step` after
each epoch or iteration, and save :meth:`~RateSchedule.state_dict` in the
checkpoint beside the optimiser's. ``p`` is a plain module attribute, not part of
``model.state_dict()``, so :meth:`~RateSchedule.load_state_dict` writes the
resumed rate back into the layers.

Which schedule when:

* :class:`Constant`: the baseline.
* :class:`LinearRamp`, :class:`CosineRamp`, :class:`ExponentialRamp`: "curriculum
  dropout" (Morerio et al., 2017, "Curriculum dropout"): start with little noise
  and raise it, so early learning is easy and regularisation grows as the model
  starts to overfit. The paper's own schedule is the exponential one.
* :class:`EarlyDropout`: dropout only for the first steps (Liu et al., 2023,
  "Dropout reduces underfitting"); for models that *underfit* (large data, small
  model): early dropout aligns mini-batch gradients with the full-data gradient.
* :class:`LateDropout`: no dropout first, then dropout (same paper); for models
  that overfit.
* :class:`Step`: piecewise-constant values at given step boundaries.

With ``relative=True`` a schedule's value multiplies each layer's own rate as it
was at construction, so a model with input dropout 0.2 and hidden dropout 0.5
ramps both from 0 to their own targets with ``LinearRamp(model, 0.0, 1.0, n,
relative=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from torch import nn

from dropkit._layers import (
    ModuleTypes,
    display_name,
    dropout_layers,
    has_settable_p,
    validate_model,
    validate_types,
)
from dropkit.functional import validate_p

__all__ = [
    "RateSchedule",
    "Constant",
    "LinearRamp",
    "CosineRamp",
    "ExponentialRamp",
    "EarlyDropout",
    "LateDropout",
    "Step",
]


def _validate_steps(value: object, name: str, *, allow_zero: bool = False) -> int:
    lowest = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} has to be an integer >= {lowest}, but got {value!r}")
    return value


class RateSchedule:
    """Base class: subclasses define :meth:`value` (the rate, or factor, at a step).

    Args:
        model: the model whose dropout layers the schedule drives (``torch.nn``
            dropout modules and dropkit's; learned rates are left alone).
        relative: ``False``: the value is the drop probability itself.
            ``True``: it multiplies each layer's rate at construction.
        types: restrict the schedule to instances of these module classes.
    """

    _hyperparameters: tuple[str, ...] = ()

    def __init__(
        self, model: nn.Module, *, relative: bool = False, types: Optional[ModuleTypes] = None
    ) -> None:
        self.model = validate_model(model, type(self).__name__)
        if not isinstance(relative, bool):
            raise TypeError(f"relative has to be a bool, but got {relative!r}")
        self.relative = relative
        self.types = validate_types(types, type(self).__name__)
        self.base_ps: dict[str, float] = {
            display_name(name): float(module.p) for name, module in self._layers()
        }
        self.last_step = -1
        self.last_p: float = float("nan")
        self.step()

    def value(self, step: int) -> float:
        """The schedule's value at ``step`` (a drop probability, or a factor when relative)."""
        raise NotImplementedError

    def _layers(self):
        for name, module in dropout_layers(self.model, self.types):
            if has_settable_p(module):
                yield name, module

    def step(self, step: Optional[int] = None) -> float:
        """Advance to the next step (or to ``step``) and set every layer's rate.

        Returns the schedule's value at the new step.
        """
        if step is None:
            step = self.last_step + 1
        self.last_step = _validate_steps(step, "step", allow_zero=True)
        self.last_p = self._apply()
        return self.last_p

    def _apply(self) -> float:
        value = validate_p(self.value(self.last_step), f"{type(self).__name__} value")
        for name, module in self._layers():
            key = display_name(name)
            if self.relative:
                # A layer added after construction takes its current rate as its base.
                base = self.base_ps.setdefault(key, float(module.p))
                module.p = validate_p(base * value, f"rate of {key}")
            else:
                module.p = value
        return value

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the hyper-parameters, the step and base rates."""
        state = {name: getattr(self, name) for name in self._hyperparameters}
        state.update(
            schedule=type(self).__name__,
            relative=self.relative,
            base_ps=dict(self.base_ps),
            last_step=self.last_step,
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved state and write the resumed rate into the model's layers."""
        expected = type(self).__name__
        saved = state_dict.get("schedule")
        if saved != expected:
            raise ValueError(f"state_dict belongs to schedule {saved!r}, not {expected!r}")
        missing = [k for k in (*self._hyperparameters, "last_step") if k not in state_dict]
        if missing:
            raise KeyError(f"{expected} state_dict is missing {missing}")
        for name in self._hyperparameters:
            setattr(self, name, state_dict[name])
        self.relative = bool(state_dict.get("relative", False))
        self.base_ps = dict(state_dict.get("base_ps", {}))
        self.last_step = _validate_steps(state_dict["last_step"], "last_step", allow_zero=True)
        self.last_p = self._apply()

    def __repr__(self) -> str:
        hyper = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameters)
        name = type(self).__name__
        return f"{name}({hyper}, relative={self.relative}, last_step={self.last_step})"


class Constant(RateSchedule):
    """The same rate at every step.

    Example::

        >>> schedule = dropkit.schedule.Constant(model, 0.3)
    """

    _hyperparameters = ("p",)

    def __init__(self, model: nn.Module, p: float, **kwargs: Any) -> None:
        self.p = validate_p(p)
        super().__init__(model, **kwargs)

    def value(self, step: int) -> float:
        return self.p


class _Ramp(RateSchedule):
    _hyperparameters = ("start", "end", "steps")

    def __init__(
        self, model: nn.Module, start: float, end: float, steps: int, **kwargs: Any
    ) -> None:
        self.start = validate_p(start, "start")
        self.end = validate_p(end, "end")
        self.steps = _validate_steps(steps, "steps")
        super().__init__(model, **kwargs)

    def _progress(self, step: int) -> float:
        return min(step, self.steps) / self.steps


class LinearRamp(_Ramp):
    """Linear from ``start`` at step 0 to ``end`` at ``steps``, then ``end``.

    Curriculum dropout (Morerio et al., 2017) with a linear ramp; with
    ``start > end`` it is a linearly decaying rate.

    Example::

        >>> schedule = dropkit.schedule.LinearRamp(model, 0.0, 0.5, steps=10_000)
        >>> for batch in loader:
        ...     train_step(batch); schedule.step()
    """

    def value(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._progress(step)


class CosineRamp(_Ramp):
    """Half-cosine from ``start`` at step 0 to ``end`` at ``steps``, then ``end``.

    Slow at both ends, fastest in the middle, like cosine learning-rate decay.
    """

    def value(self, step: int) -> float:
        weight = 0.5 * (1.0 + math.cos(math.pi * self._progress(step)))
        return self.end + (self.start - self.end) * weight


class ExponentialRamp(RateSchedule):
    """``p(t) = end + (start - end) * exp(-gamma * t)``: the curriculum of Morerio et al. (2017).

    Morerio et al. (2017), "Curriculum dropout", eq. 7 write it for the keep
    probability, ``theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar``; with
    ``start=0`` this is the same schedule for the drop probability. The paper sets
    ``gamma`` so the ramp is nearly done after a fraction of training,
    e.g. ``gamma = 10 / total_steps``.
    """

    _hyperparameters = ("end", "gamma", "start")

    def __init__(
        self, model: nn.Module, end: float, gamma: float, start: float = 0.0, **kwargs: Any
    ) -> None:
        self.end = validate_p(end, "end")
        self.start = validate_p(start, "start")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
            math.isfinite(gamma) and gamma > 0
        ):
            raise ValueError(f"gamma has to be a finite number > 0, but got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(model, **kwargs)

    def value(self, step: int) -> float:
        return self.end + (self.start - self.end) * math.exp(-self.gamma * step)


class EarlyDropout(RateSchedule):
    """Rate ``p`` for steps ``< until``, then 0 (Liu et al., 2023, "Dropout reduces underfitting").

    Use on models that underfit; the paper turns dropout off after the first
    ~1-5% of iterations (and uses ``p`` around 0.1 for ViTs).

    Example::

        >>> schedule = dropkit.schedule.EarlyDropout(model, p=0.1, until=2_000)
    """

    _hyperparameters = ("p", "until")

    def __init__(self, model: nn.Module, p: float, until: int, **kwargs: Any) -> None:
        self.p = validate_p(p)
        self.until = _validate_steps(until, "until", allow_zero=True)
        super().__init__(model, **kwargs)

    def value(self, step: int) -> float:
        return self.p if step < self.until else 0.0


class LateDropout(RateSchedule):
    """Rate 0 for steps ``< start``, then ``p`` (Liu et al., 2023): for models that overfit."""

    _hyperparameters = ("p", "start")

    def __init__(self, model: nn.Module, p: float, start: int, **kwargs: Any) -> None:
        self.p = validate_p(p)
        self.start = _validate_steps(start, "start", allow_zero=True)
        super().__init__(model, **kwargs)

    def value(self, step: int) -> float:
        return self.p if step >= self.start else 0.0


class Step(RateSchedule):
    """Piecewise constant: ``values[i]`` from step ``boundaries[i-1]`` up to ``boundaries[i]``.

    Example::

        >>> # p = 0.1 for steps 0-9, 0.3 for 10-19, 0.5 from 20 on
        >>> schedule = dropkit.schedule.Step(model, boundaries=[10, 20], values=[0.1, 0.3, 0.5])
    """

    _hyperparameters = ("boundaries", "values")

    def __init__(
        self, model: nn.Module, boundaries: Sequence[int], values: Sequence[float], **kwargs: Any
    ) -> None:
        boundaries = [_validate_steps(b, "each boundary") for b in boundaries]
        if any(b >= c for b, c in zip(boundaries, boundaries[1:], strict=False)):
            raise ValueError(f"boundaries have to increase strictly, but got {boundaries}")
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"Step needs one more value than boundaries: got {len(boundaries)} boundaries "
                f"{boundaries} and {len(values)} values {list(values)}"
            )
        self.boundaries = boundaries
        self.values = [validate_p(v, "each value") for v in values]
        super().__init__(model, **kwargs)

    def value(self, step: int) -> float:
        index = sum(1 for boundary in self.boundaries if step >= boundary)
        return self.values[index]
