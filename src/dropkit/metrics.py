"""Metrics for predictive uncertainty: calibration, error detection, selective prediction,
and the regression scores of the UCI benchmark.

Every function takes tensors or array-likes, computes in float64 and returns
Python floats (or a small result object). Inputs are validated once: shapes
must agree, probabilities must lie in ``[0, 1]``, and NaN is rejected with the
offending argument named, because a silent NaN in an uncertainty metric turns
into a plausible-looking number.

Classification (``probs`` is ``(N, C)``, rows summing to one; ``labels`` is ``(N,)``):

* :func:`nll`: mean negative log-likelihood of the true class.
* :func:`brier_score`: mean squared distance between ``probs`` and the one-hot
  label, summed over classes (Brier, 1950).
* :func:`expected_calibration_error` / :func:`reliability_bins`: top-label
  calibration with equal-width confidence bins (Guo et al., 2017).
* :func:`adaptive_calibration_error`: the same with equal-mass bins (Nguyen &
  O'Connor, 2015; Nixon et al., 2019), robust when confidences bunch near 1.
* :func:`aurc`: area under the risk-coverage curve (Geifman et al., 2019).
* :func:`uncertainty_auroc`: how well an uncertainty score ranks errors above
  correct predictions.
* :func:`selective_prediction`: accuracy as a function of coverage when the most
  uncertain inputs are rejected first, and the area under that curve.

Regression (``mean``/``var``/``target`` are ``(N,)`` or ``(N, D)``):

* :func:`rmse`, :func:`gaussian_log_likelihood`, :func:`interval_coverage`.
* :func:`crps_gaussian`: continuous ranked probability score of ``N(mean, var)``
  (Gneiting & Raftery, 2007), closed form.
* :func:`miscalibration_area`: area between the observed and expected coverage
  of central Gaussian intervals over all levels (Chung et al., 2021, uncertainty-toolbox).
* :func:`mc_log_likelihood`: the test log-likelihood of Gal & Ghahramani (2016),
  a mixture of ``T`` Gaussians of precision ``tau`` centred on the MC samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = [
    "nll",
    "brier_score",
    "ReliabilityBins",
    "reliability_bins",
    "expected_calibration_error",
    "adaptive_calibration_error",
    "uncertainty_auroc",
    "aurc",
    "SelectiveCurve",
    "selective_prediction",
    "rmse",
    "gaussian_log_likelihood",
    "mc_log_likelihood",
    "interval_coverage",
    "crps_gaussian",
    "miscalibration_area",
]

# Probabilities are clamped to this floor before the log so a confident wrong
# prediction costs a large but finite amount (scikit-learn clips the same way).
_PROB_FLOOR = 1e-15


def real_tensor(value: Any, name: str, *, finite: bool = False, bools: bool = False) -> Tensor:
    """``value`` as a CPU float64 tensor, or an error naming ``name`` and what is wrong.

    The one input check of the uncertainty tools (metrics, calibration, conformal):
    integer (and, with ``bools``, boolean) tensors are accepted, NaN never is, and
    infinities only without ``finite``.
    """
    tensor = torch.as_tensor(value)
    accepted = (torch.int32, torch.int64) + ((torch.bool,) if bools else ())
    if not (tensor.is_floating_point() or tensor.dtype in accepted):
        raise TypeError(f"{name} must hold real numbers, but got dtype {tensor.dtype}")
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    bad = ~torch.isfinite(tensor) if finite else torch.isnan(tensor)
    if bad.any():
        kind = "NaN or infinite" if finite else "NaN"
        raise ValueError(f"{name} contains {int(bad.sum())} {kind} value(s)")
    return tensor


def positive_tensor(
    value: Any,
    name: str,
    shape: Optional[torch.Size] = None,
    like: str = "target",
    *,
    finite: bool = False,
) -> Tensor:
    """:func:`real_tensor` that must be ``> 0`` everywhere (and of ``shape``, named ``like``)."""
    tensor = real_tensor(value, name, finite=finite)
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {like} has {tuple(shape)}")
    if (tensor <= 0).any():
        raise ValueError(f"{name} must be > 0, but got {tensor[tensor <= 0][0].item()}")
    return tensor


def _as_float(value: Any, name: str) -> Tensor:
    return real_tensor(value, name, bools=True)


def _probs_labels(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    probs = _as_float(probs, "probs")
    if probs.dim() != 2:
        raise ValueError(
            f"probs must be (N, C) class probabilities, but got shape {tuple(probs.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("probs is empty: metrics need at least one prediction")
    if (probs < 0).any() or (probs > 1).any():
        bad = probs[(probs < 0) | (probs > 1)][0].item()
        raise ValueError(f"probs must lie in [0, 1], but got a value {bad}")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("labels must be integer class indices, but got non-integer floats")
    labels = labels.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but probs has {probs.shape[0]} rows"
        )
    num_classes = probs.shape[1]
    if (labels < 0).any() or (labels >= num_classes).any():
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}] for {num_classes} classes, got {bad}"
        )
    return probs, labels


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood ``-mean_i log probs[i, labels[i]]`` (natural log).

    Matches ``sklearn.metrics.log_loss`` on rows that sum to one.
    """
    probs, labels = _probs_labels(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1).clamp_min(_PROB_FLOOR)
    return float(-picked.log().mean())


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score ``mean_i sum_c (probs[i, c] - [labels[i] == c])**2``.

    This is Brier's (1950) original definition, in ``[0, 2]``. For two classes it
    is twice ``sklearn.metrics.brier_score_loss`` (which scores only the
    positive class).
    """
    probs, labels = _probs_labels(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of top-label confidence: the data of a reliability diagram.

    ``edges`` has ``n_bins + 1`` entries; bin ``b`` holds confidences in
    ``(edges[b], edges[b+1]]`` (the first bin also holds exactly 0).
    ``accuracy`` and ``confidence`` are NaN for empty bins.
    """

    edges: Tensor
    count: Tensor
    accuracy: Tensor
    confidence: Tensor

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|``."""
        filled = self.count > 0
        weights = self.count[filled].to(torch.float64) / self.count.sum()
        gaps = (self.accuracy[filled] - self.confidence[filled]).abs()
        return float((weights * gaps).sum())


def _validate_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, but got {n_bins!r}")


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by top-label confidence (Guo et al., 2017, "On calibration of
    modern neural networks"); per bin, the accuracy and the mean confidence.

    Example::

        >>> bins = reliability_bins(probs, labels, n_bins=10)
        >>> bins.accuracy - bins.confidence   # over/under-confidence per bin
    """
    _validate_bins(n_bins)
    probs, labels = _probs_labels(probs, labels)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # searchsorted on the inner edges puts c in bin b when edges[b] < c <= edges[b+1],
    # the convention of sklearn.calibration.calibration_curve.
    index = torch.searchsorted(edges[1:-1].contiguous(), confidence, right=False)
    count = torch.bincount(index, minlength=n_bins)
    safe = count.clamp_min(1).to(torch.float64)
    accuracy = torch.bincount(index, weights=correct, minlength=n_bins) / safe
    mean_conf = torch.bincount(index, weights=confidence, minlength=n_bins) / safe
    empty = count == 0
    accuracy[empty] = math.nan
    mean_conf[empty] = math.nan
    return ReliabilityBins(edges, count, accuracy, mean_conf)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins; 0 means perfectly calibrated."""
    return reliability_bins(probs, labels, n_bins).ece


def adaptive_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-mass bins ("adaptive" ECE).

    Predictions are sorted by confidence and cut into ``n_bins`` contiguous groups
    whose sizes differ by at most one (``numpy.array_split``); the score is
    ``sum_b (n_b / N) |accuracy_b - confidence_b|``. Nguyen & O'Connor (2015),
    "Posterior calibration and exploratory analysis for natural language
    processing models"; Nixon et al. (2019), "Measuring calibration in deep
    learning". Prefer it to equal-width ECE for accurate models, whose confidences
    crowd into the last equal-width bin. Equals netcal's ``ECE(equal_intervals=False)``
    when ``N`` is a multiple of ``n_bins`` and confidences are distinct (tested).
    """
    _validate_bins(n_bins)
    probs, labels = _probs_labels(probs, labels)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).to(torch.float64)
    order = torch.argsort(confidence, stable=True)
    total = confidence.numel()
    gap = 0.0
    for members in torch.tensor_split(order, min(n_bins, total)):
        gap += abs(float(correct[members].sum()) - float(confidence[members].sum()))
    return gap / total


def _binary_auroc(scores: Tensor, positives: Tensor) -> float:
    n_pos = int(positives.sum())
    n_neg = positives.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUROC needs both errors and correct predictions, but got {n_pos} errors "
            f"and {n_neg} correct ones"
        )
    # Mann-Whitney U with average ranks for ties (what roc_auc_score computes).
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    unique, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks[order] = average_rank[inverse]
    rank_sum = ranks[positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uncertainty_auroc(uncertainty: Any, errors: Any) -> float:
    """AUROC of ``uncertainty`` as a detector of ``errors`` (bool, ``True`` = wrong).

    0.5 is chance; 1.0 means every error is more uncertain than every correct
    prediction. Equals ``sklearn.metrics.roc_auc_score(errors, uncertainty)``.
    """
    scores = _as_float(uncertainty, "uncertainty").reshape(-1)
    positives = torch.as_tensor(errors).detach().cpu().reshape(-1).to(torch.bool)
    if positives.numel() != scores.numel():
        raise ValueError(
            f"errors has {positives.numel()} entries but uncertainty has {scores.numel()}"
        )
    return _binary_auroc(scores, positives)


def aurc(uncertainty: Any, loss: Any) -> float:
    """Area under the risk-coverage curve: ``mean_k (mean loss of the k least uncertain)``.

    Geifman, Uziel & El-Yaniv (2019), "Bias-reduced uncertainty estimation for
    deep neural classifiers". ``loss`` is per input: ``errors`` (bool/0-1) for the
    selective risk of a classifier, or any per-example loss. Lower is better; a
    useless ranking gets about the mean loss. Ties in ``uncertainty`` keep input
    order (as :func:`selective_prediction`, whose ``1 - area`` it equals for 0-1 loss).
    """
    scores = _as_float(uncertainty, "uncertainty").reshape(-1)
    losses = _as_float(loss, "loss").reshape(-1)
    if losses.numel() != scores.numel():
        raise ValueError(f"loss has {losses.numel()} entries but uncertainty has {scores.numel()}")
    if scores.numel() == 0:
        raise ValueError("aurc needs at least one prediction")
    order = torch.argsort(scores, stable=True)
    answered = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    return float((torch.cumsum(losses[order], 0) / answered).mean())


@dataclass(frozen=True)
class SelectiveCurve:
    """Accuracy when only the ``k`` least uncertain inputs are answered, ``k = 1..N``.

    ``coverage[k-1] = k / N`` and ``accuracy[k-1]`` is the accuracy on those ``k``;
    ``area`` is the mean of ``accuracy`` (area under the accuracy-coverage curve,
    1.0 is perfect, the plain accuracy is what a useless ranking gets).
    """

    coverage: Tensor
    accuracy: Tensor

    @property
    def area(self) -> float:
        return float(self.accuracy.mean())

    def accuracy_at(self, coverage: float) -> float:
        """Accuracy when answering the least uncertain ``coverage`` fraction (at least one)."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], but got {coverage}")
        k = max(1, int(math.floor(coverage * self.coverage.numel() + 1e-9)))
        return float(self.accuracy[k - 1])


def selective_prediction(uncertainty: Any, correct: Any) -> SelectiveCurve:
    """Accuracy-coverage curve: reject the most uncertain inputs first.

    Ties in ``uncertainty`` are broken by input order (stable sort), so the curve
    is deterministic.
    """
    scores = _as_float(uncertainty, "uncertainty").reshape(-1)
    hits = torch.as_tensor(correct).detach().cpu().reshape(-1).to(torch.float64)
    if hits.numel() != scores.numel():
        raise ValueError(f"correct has {hits.numel()} entries but uncertainty has {scores.numel()}")
    if scores.numel() == 0:
        raise ValueError("selective_prediction needs at least one prediction")
    order = torch.argsort(scores, stable=True)
    answered = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    accuracy = torch.cumsum(hits[order], 0) / answered
    return SelectiveCurve(answered / scores.numel(), accuracy)


def _regression_pair(prediction: Any, target: Any, name: str) -> tuple[Tensor, Tensor]:
    prediction = _as_float(prediction, name)
    target = _as_float(target, "target")
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name} has shape {tuple(prediction.shape)} but target has {tuple(target.shape)}"
        )
    if target.numel() == 0:
        raise ValueError("target is empty: metrics need at least one value")
    return prediction, target


def rmse(mean: Any, target: Any) -> float:
    """Root mean squared error over all elements."""
    mean, target = _regression_pair(mean, target, "mean")
    return float(((mean - target) ** 2).mean().sqrt())


def gaussian_log_likelihood(mean: Any, var: Any, target: Any) -> float:
    """Mean ``log N(target; mean, var)`` per element (moment-matched Gaussian)."""
    mean, target = _regression_pair(mean, target, "mean")
    var = positive_tensor(var, "var", target.shape)
    return float((-0.5 * (math.log(2 * math.pi) + var.log() + (target - mean) ** 2 / var)).mean())


def mc_log_likelihood(samples: Any, target: Any, tau: float) -> float:
    """Test log-likelihood of MC dropout (Gal & Ghahramani, 2016, eq. 8).

    ``mean_i log( (1/T) sum_t N(target_i; samples[t, i], 1/tau) )``, evaluated with
    logsumexp. ``samples`` is ``(T, *target.shape)``; ``tau`` is the model
    precision in the units of ``target``.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"tau must be a positive precision, but got {tau!r}")
    samples = _as_float(samples, "samples")
    target = _as_float(target, "target")
    if samples.dim() != target.dim() + 1 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"samples must be (T, *target.shape) = (T, {', '.join(map(str, target.shape))}), "
            f"but got {tuple(samples.shape)}"
        )
    count = samples.shape[0]
    log_kernel = -0.5 * tau * (target[None] - samples) ** 2
    per_point = (
        torch.logsumexp(log_kernel, 0)
        - math.log(count)
        - 0.5 * math.log(2 * math.pi)
        + 0.5 * math.log(tau)
    )
    return float(per_point.mean())


def interval_coverage(mean: Any, var: Any, target: Any, level: float = 0.95) -> float:
    """Fraction of targets inside the central ``level`` interval of ``N(mean, var)``.

    A calibrated model gives about ``level``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), but got {level}")
    mean, target = _regression_pair(mean, target, "mean")
    var = positive_tensor(var, "var", target.shape)
    half_width = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64))
    inside = (target - mean).abs() <= half_width * var.sqrt()
    return float(inside.to(torch.float64).mean())


def crps_gaussian(mean: Any, var: Any, target: Any) -> float:
    """Mean CRPS of ``N(mean, var)`` at ``target``, closed form (lower is better).

    ``CRPS = sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with
    ``z = (target - mean) / sigma`` (Gneiting & Raftery, 2007, "Strictly proper
    scoring rules, prediction, and estimation", eq. 21). In the units of the
    target; a point forecast's CRPS is its absolute error. Checked against
    numerical integration of ``(F(x) - 1[x >= y])^2`` and uncertainty-toolbox.
    """
    mean, target = _regression_pair(mean, target, "mean")
    sigma = positive_tensor(var, "var", target.shape).sqrt()
    z = (target - mean) / sigma
    cdf = 0.5 * (1 + torch.special.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    crps = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return float(crps.mean())


def miscalibration_area(mean: Any, var: Any, target: Any, n_levels: int = 100) -> float:
    """Area between observed and expected coverage of central Gaussian intervals.

    For levels ``p`` on ``linspace(0, 1, n_levels)``, the observed proportion is the
    fraction of targets inside the central ``p`` interval of ``N(mean, var)``; the
    area is ``integral |observed(p) - p| dp`` of the piecewise-linear curve, exact
    where it crosses the diagonal. 0 is calibrated, 0.5 the worst. Chung et al.
    (2021), "Uncertainty Toolbox" (``miscalibration_area``; equal to it, tested).
    """
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an int >= 2, but got {n_levels!r}")
    mean, target = _regression_pair(mean, target, "mean")
    sigma = positive_tensor(var, "var", target.shape).sqrt()
    normalised = ((target - mean).abs() / sigma).reshape(-1)
    expected = torch.linspace(0.0, 1.0, n_levels, dtype=torch.float64)
    # Half-width of the central p interval in standard deviations: Phi^-1((1 + p) / 2).
    half_width = math.sqrt(2.0) * torch.special.erfinv(expected)
    observed = (normalised[None, :] <= half_width[:, None]).to(torch.float64).mean(1)
    gap = observed - expected
    left, right, width = gap[:-1], gap[1:], expected.diff()
    same_sign = left * right >= 0
    straight = width * (left.abs() + right.abs()) / 2
    # A segment crossing zero: two triangles, (a^2 + b^2) / (2 (|a| + |b|)) times the width.
    crossing = width * (left**2 + right**2) / (2 * (left.abs() + right.abs()).clamp_min(1e-300))
    return float(torch.where(same_sign, straight, crossing).sum())
