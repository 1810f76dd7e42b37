"""Split conformal prediction on top of MC-dropout predictions.

Split conformal prediction (Vovk, Gammerman & Shafer, 2005; Lei et al., 2018,
"Distribution-free predictive inference for regression") turns any predictor
into intervals or sets with a finite-sample guarantee: if the calibration and
test examples are exchangeable, a new example is covered with probability at
least ``1 - alpha``, whatever the model. It costs one held-out calibration set.

With ``n`` calibration scores, the threshold is their
``ceil((n + 1)(1 - alpha))``-th smallest value (:func:`conformal_quantile`), i.e.
the empirical quantile at level ``ceil((n+1)(1-alpha))/n``. Coverage is then
``>= 1 - alpha`` and, with continuous scores, ``< 1 - alpha + 1/(n + 1)``.

* :class:`ConformalRegressor`: intervals from an MC-dropout mean and standard
  deviation. ``score="normalized"``: ``|y - mean| / std`` (intervals
  ``mean +- q std``, wide where the model is unsure; Papadopoulos et al., 2002);
  ``score="absolute"``: ``|y - mean|`` (constant width ``2q``).
* :class:`ConformalClassifier`: prediction sets from MC-averaged class
  probabilities, by APS (Romano, Sesia & Candes, 2020, "Classification with
  valid and adaptive coverage") or RAPS (Angelopoulos, Bates, Malik & Jordan,
  2021, "Uncertainty sets for image classifiers using conformal prediction"),
  which adds ``lam * max(0, rank - k_reg)`` to keep sets small.

Example::

    >>> cal = mc.predict(net, x_cal, 100, task="regression", tau=tau)
    >>> reg = ConformalRegressor(alpha=0.1).fit(cal.mean, cal.variance.sqrt(), y_cal)
    >>> test = mc.predict(net, x_test, 100, task="regression", tau=tau)
    >>> lower, upper = reg.predict(test.mean, test.variance.sqrt())
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from dropkit.metrics import positive_tensor, real_tensor

__all__ = [
    "conformal_quantile",
    "ConformalRegressor",
    "ConformalClassifier",
    "coverage",
    "set_sizes",
]


def _as_tensor(value: Any, name: str) -> Tensor:
    return real_tensor(value, name)


def _validate_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha (the miscoverage rate) must be in (0, 1), but got {alpha!r}")
    return float(alpha)


def _rank(n: int, alpha: float) -> int:
    return math.ceil((n + 1) * (1 - alpha))


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` calibration scores.

    Refuses a calibration set too small for the level: with ``n < 1/alpha - 1``
    that rank exceeds ``n`` and the only valid threshold is infinite.
    """
    alpha = _validate_alpha(alpha)
    scores = _as_tensor(scores, "scores").reshape(-1)
    n = scores.numel()
    if n == 0:
        raise ValueError("the calibration set is empty: conformal prediction needs scores")
    rank = _rank(n, alpha)
    if rank > n:
        needed = math.ceil(1 / alpha - 1)
        raise ValueError(
            f"the calibration set has {n} examples; alpha={alpha} needs at least {needed} "
            f"(rank ceil((n+1)(1-alpha)) = {rank} > n gives an infinite threshold)"
        )
    return float(scores.sort().values[rank - 1])


class ConformalRegressor:
    """Split-conformal intervals around an MC-dropout (or any) mean.

    Args:
        alpha: miscoverage; intervals cover a new exchangeable target with
            probability ``>= 1 - alpha``.
        score: ``"normalized"`` (``|y - mean| / std``: adaptive widths) or
            ``"absolute"`` (``|y - mean|``: constant width; ``std`` unused).

    Shapes: ``mean``, ``std``, ``target`` are ``(N,)`` or ``(N, D)``; each element
    is one calibration score (for ``D > 1`` the guarantee is per element).

    Example::

        >>> reg = ConformalRegressor(0.1).fit(mean_cal, std_cal, y_cal)
        >>> lower, upper = reg.predict(mean_test, std_test)
    """

    def __init__(self, alpha: float = 0.1, *, score: Literal["normalized", "absolute"] =
                 "normalized") -> None:
        self.alpha = _validate_alpha(alpha)
        if score not in ("normalized", "absolute"):
            raise ValueError(f"score must be 'normalized' or 'absolute', but got {score!r}")
        self.score = score
        self.quantile: Optional[float] = None

    def _scale(self, std: Optional[Any], shape: torch.Size) -> Tensor:
        if self.score == "absolute":
            return torch.ones(shape, dtype=torch.float64)
        if std is None:
            raise ValueError("score='normalized' needs std, the predictive standard deviation")
        return positive_tensor(std, "std", shape, like="mean")

    def scores(self, mean: Any, std: Optional[Any], target: Any) -> Tensor:
        """The nonconformity scores of labelled examples."""
        mean = _as_tensor(mean, "mean")
        target = _as_tensor(target, "target")
        if target.shape != mean.shape:
            raise ValueError(
                f"target has shape {tuple(target.shape)} but mean has {tuple(mean.shape)}"
            )
        return (target - mean).abs() / self._scale(std, mean.shape)

    def fit(self, mean: Any, std: Optional[Any], target: Any) -> ConformalRegressor:
        self.quantile = conformal_quantile(self.scores(mean, std, target), self.alpha)
        return self

    def predict(self, mean: Any, std: Optional[Any] = None) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` = ``mean -+ quantile * std`` (``* 1`` for absolute scores)."""
        if self.quantile is None:
            raise RuntimeError("ConformalRegressor.predict called before fit")
        mean = _as_tensor(mean, "mean")
        half = self.quantile * self._scale(std, mean.shape)
        return mean - half, mean + half

    def __repr__(self) -> str:
        return (
            f"ConformalRegressor(alpha={self.alpha}, score={self.score!r}, "
            f"quantile={self.quantile})"
        )


def _mean_probs(probs: Any) -> Tensor:
    probs = _as_tensor(probs, "probs")
    if probs.dim() == 3:
        probs = probs.mean(0)  # MC samples (T, N, C): the predictive distribution
    if probs.dim() != 2 or probs.shape[-1] < 2:
        raise ValueError(
            f"probs must be (N, C) class probabilities (or MC samples (T, N, C)) with C >= 2, "
            f"but got shape {tuple(probs.shape)}"
        )
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax(logits)")
    return probs


class ConformalClassifier:
    """Split-conformal prediction sets by APS or RAPS from (MC-averaged) probabilities.

    Score of label ``y`` for an input with probabilities ``p`` sorted descending,
    ``y`` at rank ``o`` (1-based), ``u ~ U(0, 1)``:
    ``E = sum_{j <= o} p_(j) - u p_y + lam * max(0, o - k_reg)``
    (``lam = 0``: APS; Angelopoulos et al., 2021, Algorithm 1-2). The set of an
    input holds every label whose score is ``<= quantile``; the score grows with
    the rank, so a set is the top labels down to a cut. ``randomized=False``
    drops ``u p_y`` (sets a bit larger, coverage still ``>= 1 - alpha``).
    Randomised sets may be empty, which the guarantee counts as a miss.

    Use APS when classes are few; RAPS with ``lam`` ~ 0.01-0.1 and ``k_reg`` ~ the
    usual set size when many low-probability classes would otherwise pad the sets.

    Args:
        alpha: miscoverage; sets contain the true label with probability ``>= 1 - alpha``.
        method: ``"aps"`` or ``"raps"``.
        lam, k_reg: the RAPS penalty (ignored for APS).
        randomized: use the ``u`` term (exact coverage ``1 - alpha`` in expectation).
        seed: seeds the ``u`` draws (a private generator); ``None`` draws from torch's.

    Shapes: ``fit(probs (N, C) or (T, N, C), labels (N,))``;
    ``predict(probs)`` -> boolean ``(N, C)`` set membership.

    Example::

        >>> sets = ConformalClassifier(0.1, method="raps").fit(p_cal, y_cal).predict(p_test)
        >>> coverage(sets, y_test), set_sizes(sets).float().mean()
    """

    def __init__(
        self, alpha: float = 0.1, *, method: Literal["aps", "raps"] = "aps", lam: float = 0.01,
        k_reg: int = 5, randomized: bool = True, seed: Optional[int] = 0,
    ) -> None:
        self.alpha = _validate_alpha(alpha)
        if method not in ("aps", "raps"):
            raise ValueError(f"method must be 'aps' or 'raps', but got {method!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise ValueError(f"lam must be a float >= 0, but got {lam!r}")
        if isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 0:
            raise ValueError(f"k_reg must be an int >= 0, but got {k_reg!r}")
        self.method = method
        self.lam = float(lam) if method == "raps" else 0.0
        self.k_reg = k_reg
        self.randomized = randomized
        self.generator = torch.Generator()
        seed = int(torch.randint(0, 2**62, (1,))) if seed is None else seed
        self.generator.manual_seed(seed)
        self.quantile: Optional[float] = None

    def _all_scores(self, probs: Tensor) -> Tensor:
        """``(N, C)``: the score every label would get, with one ``u`` per input."""
        order = torch.argsort(probs, dim=-1, descending=True, stable=True)
        sorted_probs = probs.gather(-1, order)
        ranks = torch.arange(1, probs.shape[-1] + 1, dtype=torch.float64)
        penalty = self.lam * (ranks - self.k_reg).clamp_min(0.0)
        cumulative = sorted_probs.cumsum(-1) + penalty
        if self.randomized:
            u = torch.rand(probs.shape[0], 1, generator=self.generator, dtype=torch.float64)
            cumulative = cumulative - u * sorted_probs
        scores = torch.empty_like(cumulative)
        scores.scatter_(-1, order, cumulative)
        return scores

    def fit(self, probs: Any, labels: Any) -> ConformalClassifier:
        probs = _mean_probs(probs)
        labels = torch.as_tensor(labels).detach().cpu().to(torch.int64).reshape(-1)
        rows, classes = probs.shape
        if labels.numel() != rows:
            raise ValueError(f"labels has {labels.numel()} entries but probs has {rows} rows")
        outside = (labels < 0) | (labels >= classes)
        if outside.any():
            raise ValueError(
                f"labels must be in [0, {classes - 1}] for {classes} classes, but got "
                f"{int(labels[outside][0])} ({int(outside.sum())} outside)"
            )
        true_scores = self._all_scores(probs).gather(-1, labels[:, None]).squeeze(-1)
        self.quantile = conformal_quantile(true_scores, self.alpha)
        return self

    def predict(self, probs: Any) -> Tensor:
        """Boolean set membership ``(N, C)``: label ``c`` is in the set of input ``i``."""
        if self.quantile is None:
            raise RuntimeError("ConformalClassifier.predict called before fit")
        return self._all_scores(_mean_probs(probs)) <= self.quantile

    def __repr__(self) -> str:
        return (
            f"ConformalClassifier(alpha={self.alpha}, method={self.method!r}, lam={self.lam}, "
            f"k_reg={self.k_reg}, quantile={self.quantile})"
        )


def coverage(sets: Any, labels: Any) -> float:
    """Fraction of inputs whose set (boolean ``(N, C)``) holds the true label."""
    sets = torch.as_tensor(sets).to(torch.bool)
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    if sets.dim() != 2 or sets.shape[0] != labels.numel():
        raise ValueError(
            f"sets must be (N, C) with N = {labels.numel()} labels, got {tuple(sets.shape)}"
        )
    return float(sets.gather(-1, labels[:, None]).to(torch.float64).mean())


def set_sizes(sets: Any) -> Tensor:
    """Number of labels in each set, ``int64 (N,)``."""
    return torch.as_tensor(sets).to(torch.bool).sum(-1)
