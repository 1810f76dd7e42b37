"""Post-hoc calibration of predictive uncertainty, fitted on a held-out validation set.

* :class:`TemperatureScaler`: one temperature ``T`` divides the logits (Guo et
  al., 2017, "On calibration of modern neural networks"), fitted by minimising
  the validation NLL with L-BFGS. It works on plain logits, on MC-averaged
  probabilities (their log is a valid logit vector) and on raw MC samples
  ``(T, N, C)`` (averaged first). Accuracy never changes: the argmax does not move.
* :class:`VarianceScaler`: regression. One factor ``s`` multiplies the predictive
  variance, chosen so that the central ``level`` Gaussian interval covers exactly
  ``level`` of the validation targets (``method="coverage"``), or by maximum
  likelihood (``method="nll"``, sigma scaling of Laves et al., 2020, "Well-calibrated
  regression uncertainty in medical imaging with deep learning").

Fit on data the model was not trained on, and use the fitted scaler on new
data. Both take plain tensors (or array-likes), so reports can call them directly.

Example::

    >>> scaler = TemperatureScaler().fit(val_logits, val_labels)
    >>> scaler.temperature                  # > 1: the model was over-confident
    >>> probs = scaler.transform(test_logits)
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from dropkit.metrics import positive_tensor, real_tensor

__all__ = ["TemperatureScaler", "VarianceScaler", "fit_temperature"]

Inputs = Literal["logits", "probs"]

# Fewer validation examples than this make one fitted parameter mostly noise; the
# NLL minimiser also needs both right and wrong predictions to bound T.
_MIN_VALIDATION = 20
_PROB_FLOOR = 1e-12


def _as_tensor(value: Any, name: str) -> Tensor:
    return real_tensor(value, name, finite=True)


def _log_scores(values: Any, inputs: str) -> Tensor:
    """``(N, C)`` logits from logits, probabilities, or MC samples of either."""
    if inputs not in ("logits", "probs"):
        raise ValueError(f"inputs must be 'logits' or 'probs', but got {inputs!r}")
    name = inputs
    tensor = _as_tensor(values, name)
    if tensor.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be (N, C), or MC samples (T, N, C), but got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, but has {tensor.shape[-1]} column(s)")
    if inputs == "probs" and ((tensor < 0).any() or (tensor > 1).any()):
        raise ValueError("probs must lie in [0, 1]; pass inputs='logits' for unnormalised scores")
    if tensor.dim() == 3:
        # MC samples: the predictive distribution is the mean of the sampled softmaxes.
        probs = tensor.softmax(-1) if inputs == "logits" else tensor
        return probs.mean(0).clamp_min(_PROB_FLOOR).log()
    if inputs == "probs":
        return tensor.clamp_min(_PROB_FLOOR).log()
    return tensor


def _labels(labels: Any, rows: int, classes: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be integer class indices, but got non-integer floats")
    labels = labels.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    if labels.numel() != rows:
        raise ValueError(f"labels has {labels.numel()} entries but there are {rows} predictions")
    outside = (labels < 0) | (labels >= classes)
    if outside.any():
        where = int(torch.nonzero(outside)[0])
        raise ValueError(
            f"labels must be in [0, {classes - 1}] for {classes} classes, but label "
            f"{int(labels[where])} is at index {where} ({int(outside.sum())} outside in all)"
        )
    return labels


def _check_size(rows: int, min_samples: int, what: str) -> None:
    if rows == 0:
        raise ValueError(f"the validation set is empty: {what} needs at least {min_samples}")
    if rows < min_samples:
        raise ValueError(
            f"the validation set has {rows} examples; {what} needs at least {min_samples} "
            f"(min_samples)"
        )


def _validate_min_samples(min_samples: Any) -> int:
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"min_samples must be an int >= 1, but got {min_samples!r}")
    return min_samples


def fit_temperature(
    logits: Any, labels: Any, *, inputs: Inputs = "logits", max_iter: int = 100,
    min_samples: int = _MIN_VALIDATION,
) -> float:
    """The temperature ``T > 0`` minimising ``NLL(softmax(logits / T), labels)``.

    Guo et al. (2017). Optimised over ``log T`` (so ``T`` stays positive) with
    L-BFGS and a strong-Wolfe line search, in float64. ``inputs="probs"`` takes
    probabilities (e.g. MC-averaged) and uses their log as logits; a 3-D input is
    MC samples ``(T, N, C)`` and is averaged over samples first.
    """
    min_samples = _validate_min_samples(min_samples)
    scores = _log_scores(logits, inputs)
    rows, classes = scores.shape
    _check_size(rows, min_samples, "fitting a temperature")
    target = _labels(labels, rows, classes)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, but got {max_iter!r}")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
        tolerance_grad=1e-10, tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(scores / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature fit diverged (T = {temperature}); are the labels right?")
    return temperature


class TemperatureScaler:
    """Temperature scaling (Guo et al., 2017): ``softmax(logits / T)`` with ``T`` fitted.

    Use it when a classifier's confidence is systematically too high (``T > 1``)
    or too low (``T < 1``): one parameter, so it cannot overfit a validation set
    of a few hundred examples, and it keeps every prediction's argmax.

    Args:
        inputs: ``"logits"`` (default) or ``"probs"`` for probabilities such as
            MC-dropout means; 3-D inputs are MC samples ``(T, N, C)`` of either.
        max_iter: L-BFGS iterations.
        min_samples: smallest validation set accepted.

    Shapes: ``fit((N, C) or (T, N, C), (N,))``; ``transform`` returns ``(N, C)``
    probabilities.

    Example::

        >>> scaler = TemperatureScaler(inputs="probs").fit(mc_val.mean, val_labels)
        >>> calibrated = scaler.transform(mc_test.mean)
    """

    def __init__(
        self, inputs: Inputs = "logits", *, max_iter: int = 100,
        min_samples: int = _MIN_VALIDATION,
    ) -> None:
        if inputs not in ("logits", "probs"):
            raise ValueError(f"inputs must be 'logits' or 'probs', but got {inputs!r}")
        self.inputs = inputs
        self.max_iter = max_iter
        self.min_samples = _validate_min_samples(min_samples)
        self.temperature: Optional[float] = None

    def fit(self, values: Any, labels: Any) -> TemperatureScaler:
        self.temperature = fit_temperature(
            values, labels, inputs=self.inputs, max_iter=self.max_iter,
            min_samples=self.min_samples,
        )
        return self

    def transform(self, values: Any) -> Tensor:
        """Calibrated probabilities ``softmax(log_scores / T)`` (float64, ``(N, C)``)."""
        if self.temperature is None:
            raise RuntimeError("TemperatureScaler.transform called before fit")
        return (_log_scores(values, self.inputs) / self.temperature).softmax(-1)

    def __repr__(self) -> str:
        return f"TemperatureScaler(inputs={self.inputs!r}, temperature={self.temperature})"


def _regression(mean: Any, var: Any, target: Optional[Any]) -> tuple[Tensor, Tensor, Tensor]:
    mean = _as_tensor(mean, "mean")
    var = _as_tensor(var, "var")
    if var.shape != mean.shape:
        raise ValueError(f"var has shape {tuple(var.shape)} but mean has {tuple(mean.shape)}")
    if (var <= 0).any():
        raise ValueError(f"var must be > 0, but got {var[var <= 0][0].item()}")
    if target is None:
        return mean, var, mean
    target = _as_tensor(target, "target")
    if target.shape != mean.shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but mean has {tuple(mean.shape)}")
    return mean, var, target


def _gaussian_z(level: float) -> float:
    # Half-width of the central `level` interval of N(0, 1) in standard deviations.
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


class VarianceScaler:
    """Rescale a regression model's predictive variance: ``var * scale``, ``scale`` fitted.

    ``method="coverage"``: the smallest ``scale`` for which the central ``level``
    interval ``mean +- z sqrt(scale var)`` covers at least ``level`` of the
    validation targets (``z`` the standard normal quantile): the
    ``ceil(level * n)``-th smallest ``(r / sigma)^2 / z^2`` with residual ``r``.
    Validation coverage then equals ``level`` up to ``1/n``.
    ``method="nll"``: the Gaussian maximum-likelihood scale ``mean(r^2 / var)``
    (Laves et al., 2020, sigma scaling).

    Use it on MC-dropout regression, whose ``1/tau + Var_t`` variance is often
    too narrow or too wide by a near-constant factor. For a distribution-free
    guarantee on new data use :mod:`dropkit.conformal` instead.

    Example::

        >>> scaler = VarianceScaler(level=0.9).fit(val.mean, val.variance, y_val)
        >>> var = scaler.transform(test.variance)     # intervals now cover ~90 %
    """

    def __init__(
        self, level: float = 0.9, *, method: Literal["coverage", "nll"] = "coverage",
        min_samples: int = _MIN_VALIDATION,
    ) -> None:
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), but got {level!r}")
        if method not in ("coverage", "nll"):
            raise ValueError(f"method must be 'coverage' or 'nll', but got {method!r}")
        self.level = float(level)
        self.method = method
        self.min_samples = _validate_min_samples(min_samples)
        self.scale: Optional[float] = None

    def fit(self, mean: Any, var: Any, target: Any) -> VarianceScaler:
        mean, var, target = _regression(mean, var, target)
        _check_size(target.numel(), self.min_samples, "fitting a variance scale")
        ratio = ((target - mean) ** 2 / var).reshape(-1)
        if self.method == "nll":
            self.scale = float(ratio.mean())
        else:
            rank = math.ceil(self.level * ratio.numel())
            scale = float(ratio.sort().values[rank - 1]) / _gaussian_z(self.level) ** 2
            # One part in 1e9 more keeps the rank-th residual inside the interval when
            # the coverage check recomputes z * sqrt(scale * var) with its own rounding.
            self.scale = scale * (1 + 1e-9)
        if self.scale <= 0:
            # Every residual was zero: no finite rescaling is meaningful.
            raise ValueError("all validation residuals are 0; cannot fit a variance scale")
        return self

    def transform(self, var: Any) -> Tensor:
        """The rescaled variance ``var * scale`` (float64)."""
        if self.scale is None:
            raise RuntimeError("VarianceScaler.transform called before fit")
        return positive_tensor(var, "var", finite=True) * self.scale

    def __repr__(self) -> str:
        return f"VarianceScaler(level={self.level}, method={self.method!r}, scale={self.scale})"
