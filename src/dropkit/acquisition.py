"""Active-learning acquisition scores from MC-dropout samples of class probabilities.

Every score takes ``probs`` of shape ``(T, N, C)``: ``T`` MC samples (as
``dropkit.mc.predict(...).probs`` returns them) of the class probabilities of
``N`` pool inputs over ``C`` classes, and returns a float64 tensor ``(N,)``
where **higher means acquire first** (so :func:`select` is the same for all).

* :func:`bald`: mutual information between the label and the weights
  (Houlsby et al., 2011, "Bayesian active learning for classification and
  preference learning"; with MC dropout: Gal, Islam & Ghahramani, 2017, "Deep
  Bayesian active learning with image data").
* :func:`batch_bald`: greedy BatchBALD (Kirsch, van Amersfoort & Gal, 2019,
  "BatchBALD: efficient and diverse batch acquisition for deep Bayesian active
  learning"): the mutual information of the *joint* labels of the batch, so a
  batch does not fill up with near-duplicates the way top-k BALD does.
* :func:`max_entropy`: predictive entropy ``H[mean_t p_t]`` (Shannon, 1948).
* :func:`variation_ratios`: ``1 - (votes for the modal class) / T`` (Freeman, 1965).
* :func:`margin`: minus the gap between the two most probable classes of the
  mean prediction (Scheffer et al., 2001), so small gaps score high.
* :func:`mean_std`: per-class standard deviation over samples, averaged over
  classes (Kampffmeyer et al., 2016).
* :func:`random`: uniform scores, the baseline.
* :func:`select`: the ``k`` highest scores, ties broken towards lower indices.

Example::

    >>> from dropkit import acquisition, mc
    >>> probs = mc.predict(model, pool_x, samples=20, seed=0).probs     # (T, N, C)
    >>> chosen = acquisition.select(acquisition.bald(probs), k=10)
    >>> batch = acquisition.batch_bald(probs, k=10, seed=0)             # diverse batch
    >>> batch.indices, batch.scores
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = [
    "bald",
    "BatchSelection",
    "batch_bald",
    "max_entropy",
    "variation_ratios",
    "margin",
    "mean_std",
    "random",
    "select",
    "SCORES",
]

# Rows of probabilities must sum to one within this (softmax outputs in float32
# are off by ~1e-7; a model that forgot its softmax is off by far more).
_SUM_TOLERANCE = 1e-4
# Default cap on the joint label configurations BatchBALD carries: beyond it they are
# sampled (Kirsch et al., 2019, sec. 3.3 use the same switch).
_DEFAULT_MAX_CONFIGURATIONS = 4096
# Default cap on the float64 work buffer of one BatchBALD chunk over the pool.
_DEFAULT_CHUNK_BYTES = 64 << 20


def _validate_probs(probs: Any, name: str = "probs") -> Tensor:
    if not isinstance(probs, Tensor):
        probs = torch.as_tensor(probs)
    if probs.dim() != 3:
        raise ValueError(
            f"{name} must be MC samples of class probabilities shaped (T, N, C), but got "
            f"shape {tuple(probs.shape)}"
        )
    if 0 in probs.shape:
        raise ValueError(f"{name} is empty: shape {tuple(probs.shape)} (T, N, C all >= 1)")
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be floating point probabilities, but got {probs.dtype}")
    probs = probs.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(probs).any():
        raise ValueError(f"{name} contains {int(torch.isnan(probs).sum())} NaN value(s)")
    if (probs < 0).any() or (probs > 1).any():
        bad = probs[(probs < 0) | (probs > 1)][0].item()
        raise ValueError(f"{name} must lie in [0, 1] (probabilities, not logits), got {bad}")
    worst = (probs.sum(-1) - 1).abs().max().item()
    if worst > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 over the class axis (last), but one is off by {worst:.3g}"
            "; pass softmax(logits), e.g. mc.predict(...).probs"
        )
    return probs


def _entropy(probs: Tensor, dim: int = -1) -> Tensor:
    # x log x -> 0 at x = 0 (xlogy), so exact zeros cost nothing instead of NaN.
    return -torch.special.xlogy(probs, probs).sum(dim)


def max_entropy(probs: Any) -> Tensor:
    """Predictive entropy ``H[mean_t p_t]`` in nats: total uncertainty.

    Gal, Islam & Ghahramani (2017), eq. 1. Favours inputs that are ambiguous for
    any reason, noisy labels included. Shape: ``(T, N, C) -> (N,)``.
    """
    return _entropy(_validate_probs(probs).mean(0))


def bald(probs: Any) -> Tensor:
    """BALD: ``H[mean_t p_t] - mean_t H[p_t]``, the label-weights mutual information (nats).

    Houlsby et al. (2011); Gal, Islam & Ghahramani (2017), eq. 2. High where the
    sampled networks disagree confidently, not where each is unsure: it picks
    inputs whose label would teach the model most. Equals baal's ``BALD``
    heuristic on the same samples (tested). Shape: ``(T, N, C) -> (N,)``.
    """
    probs = _validate_probs(probs)
    return _entropy(probs.mean(0)) - _entropy(probs).mean(0)


def variation_ratios(probs: Any) -> Tensor:
    """``1 - f / T`` where ``f`` counts the samples voting for the modal class.

    Freeman (1965); Gal, Islam & Ghahramani (2017), eq. 3. Zero when every
    sampled network predicts the same class. Ties of the per-sample argmax go to
    the lower class index. Shape: ``(T, N, C) -> (N,)``.
    """
    probs = _validate_probs(probs)
    samples, _, classes = probs.shape
    votes = torch.nn.functional.one_hot(probs.argmax(-1), classes).sum(0)
    return 1.0 - votes.max(-1).values.to(torch.float64) / samples


def margin(probs: Any) -> Tensor:
    """Minus the gap between the top two classes of the mean prediction.

    Margin sampling (Scheffer, Decomain & Wrobel, 2001) acquires the smallest
    gaps; the sign is flipped so that, as for every score here, higher means
    acquire first. Equals minus baal's ``Margin`` value. Needs ``C >= 2``.
    """
    probs = _validate_probs(probs)
    if probs.shape[-1] < 2:
        raise ValueError(f"margin needs at least 2 classes, but probs has {probs.shape[-1]}")
    top = probs.mean(0).topk(2, dim=-1).values
    return -(top[:, 0] - top[:, 1])


def mean_std(probs: Any) -> Tensor:
    """Mean over classes of the standard deviation over samples of ``p_t(c)``.

    Kampffmeyer, Salberg & Jenssen (2016), used as "Mean STD" by Gal, Islam &
    Ghahramani (2017), eq. 4: ``mean_c sqrt(E_t[p_c^2] - E_t[p_c]^2)`` (population
    moments). Shape: ``(T, N, C) -> (N,)``.
    """
    probs = _validate_probs(probs)
    # Two-pass std: E[p^2] - E[p]^2 cancels catastrophically for tiny probabilities.
    return probs.std(0, correction=0).mean(-1)


def random(probs: Any, *, seed: Optional[int] = None) -> Tensor:
    """Uniform random scores in ``[0, 1)``: the baseline every acquisition must beat.

    ``seed`` makes the draw reproducible (a private generator; torch's global
    one is left alone); ``None`` draws from torch's global generator.
    """
    probs = _validate_probs(probs)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(_validate_seed(seed))
    return torch.rand(probs.shape[1], generator=generator, dtype=torch.float64)


def _validate_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), but got {seed!r}")
    return seed


def _validate_k(k: Any, pool: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= pool:
        raise ValueError(f"k must be an int in [1, {pool}] (the pool size), but got {k!r}")
    return k


def select(scores: Any, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` (``int64 (k,)``), best first.

    Ties go to the lower index (stable sort), so a selection is reproducible.
    NaN scores are rejected: they would sort arbitrarily.
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 1:
        raise ValueError(f"scores must be one score per pool input (N,), got {tuple(scores.shape)}")
    scores = scores.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(scores).any():
        raise ValueError(f"scores contains {int(torch.isnan(scores).sum())} NaN value(s)")
    k = _validate_k(k, scores.numel())
    return torch.argsort(scores, descending=True, stable=True)[:k]


@dataclass(frozen=True)
class BatchSelection:
    """A greedily built batch: ``indices[i]`` was the ``i``-th pick.

    ``scores[i]`` is the BatchBALD value (nats) of the batch ``indices[: i + 1]``,
    the mutual information between its joint labels and the weights; it never
    decreases by more than the estimator's noise. ``scores[0]`` is the BALD score of
    the first pick. ``sampled[i]`` says whether the joint entropy of that step was
    estimated from sampled configurations instead of enumerated exactly.
    """

    indices: Tensor
    scores: Tensor
    sampled: tuple[bool, ...]


def batch_bald(
    probs: Any,
    k: int,
    *,
    max_configurations: int = _DEFAULT_MAX_CONFIGURATIONS,
    chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    seed: Optional[int] = None,
) -> BatchSelection:
    """Greedy BatchBALD: pick ``k`` pool inputs maximising the joint mutual information.

    Kirsch, van Amersfoort & Gal (2019). Step ``n`` adds the input ``x`` maximising
    ``H[y_1, .., y_{n-1}, y_x] - sum_i H[y_i | w] - H[y_x | w]``, with every entropy
    estimated from the same ``T`` MC samples: the joint label distribution is the
    mixture ``p(y_1..n) = mean_t prod_i p_t(y_i)``. Use it instead of top-k
    :func:`bald` when the batch is large compared with how fast the model learns:
    top-k BALD takes ``k`` near-copies of one confusing input.

    For the samples to be jointly meaningful, draw them with one mask per sample
    shared by all inputs: ``mc.predict(..., consistent=True)``.

    Memory stays bounded two ways:

    * Configurations: the joint labels of the chosen inputs are enumerated
      exactly (``C ** (n-1)`` of them, each a ``(T,)`` product of probabilities)
      while that count is at most ``max_configurations``; beyond it,
      ``max_configurations`` configurations are *sampled* from the mixture (pick a
      sample ``t`` uniformly, then each label from ``p_t``) and the joint entropy is
      the importance-sampling estimate of Kirsch et al. (sec. 3.3). The carried
      matrix is at most ``(T, max_configurations)``.
    * The pool: candidates are scored in chunks whose ``(configurations, chunk, C)``
      float64 buffer fits in ``chunk_bytes``, so the pool size only costs its
      ``(T, N, C)`` input.

    ``seed`` seeds the configuration sampler (a private generator); the exact
    steps use no randomness. Returns a :class:`BatchSelection`.
    """
    probs = _validate_probs(probs)
    samples, pool, classes = probs.shape
    k = _validate_k(k, pool)
    for name, value, low in (("max_configurations", max_configurations, classes),
                             ("chunk_bytes", chunk_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, but got {value!r}")
    if seed is None:
        # Like dropkit.mc: draw the seed from torch's generator, so torch.manual_seed
        # reproduces an unseeded call.
        seed = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator().manual_seed(_validate_seed(seed))

    conditional = _entropy(probs).mean(0)  # H[y_x | w], estimated by mean_t H[p_t]
    # joint[t, m] = p_t(configuration m of the labels chosen so far); one empty configuration.
    joint = torch.ones(samples, 1, dtype=torch.float64)
    weights: Optional[Tensor] = None  # 1 / q(m) of sampled configurations, None when exact
    chosen: list[int] = []
    scores: list[float] = []
    sampled: list[bool] = []
    taken = torch.zeros(pool, dtype=torch.bool)
    chosen_conditional = 0.0
    flat = probs.reshape(samples, pool * classes)
    for _ in range(k):
        entropy = _joint_entropy_with(joint, weights, flat, pool, classes, chunk_bytes)
        gain = entropy - conditional
        gain[taken] = -math.inf
        best = int(torch.argmax(gain))  # first maximum: ties go to the lower index
        chosen.append(best)
        taken[best] = True
        chosen_conditional += float(conditional[best])
        scores.append(float(entropy[best]) - chosen_conditional)
        sampled.append(weights is not None)
        if len(chosen) == k:
            break
        joint, weights = _extend(joint, weights is None, probs[:, best], max_configurations,
                                 generator, probs[:, chosen])
    return BatchSelection(
        torch.tensor(chosen, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float64),
        tuple(sampled),
    )


def _joint_entropy_with(
    joint: Tensor, weights: Optional[Tensor], flat: Tensor, pool: int, classes: int,
    chunk_bytes: int,
) -> Tensor:
    """``H[y_chosen, y_x]`` for every pool input ``x``, exact or importance-sampled.

    ``mixture[m, x, c] = mean_t joint[t, m] p_t(c | x)`` is one matmul per chunk.
    Exact: ``-sum_{m,c} mixture log mixture``. Sampled (configurations ``m`` drawn
    from ``q(m) = mean_t joint[t, m]``): ``-mean_m sum_c mixture/q(m) log mixture``.
    """
    samples, configurations = joint.shape
    per_input = configurations * classes * 8 * 2  # the mixture and its log term
    chunk = max(1, min(pool, chunk_bytes // per_input))
    out = torch.empty(pool, dtype=torch.float64)
    scaled = joint.T / samples  # (M, T): the mean over t folded into the matmul
    for start in range(0, pool, chunk):
        stop = min(pool, start + chunk)
        mixture = (scaled @ flat[:, start * classes : stop * classes]).view(
            configurations, stop - start, classes
        )
        terms = torch.special.xlogy(mixture, mixture)
        if weights is None:
            out[start:stop] = -terms.sum((0, 2))
        else:
            out[start:stop] = -(terms * weights[:, None, None]).sum((0, 2)) / configurations
    return out


def _extend(
    joint: Tensor, exact: bool, new: Tensor, max_configurations: int,
    generator: torch.Generator, chosen_probs: Tensor,
) -> tuple[Tensor, Optional[Tensor]]:
    """Add the labels of a newly chosen input (``new``: ``(T, C)``) to the configurations."""
    samples, configurations = joint.shape
    classes = new.shape[-1]
    if exact and configurations * classes <= max_configurations:
        # Exact: every old configuration times every label of the new input.
        return (joint[:, :, None] * new[:, None, :]).reshape(samples, -1), None
    # Sampled: draw fresh configurations of all chosen labels from the mixture, so the
    # estimate at each step is unbiased on its own rather than built on earlier draws.
    count = max_configurations
    which = torch.randint(samples, (count,), generator=generator)
    # (count, n, C): the label distribution of each chosen input under the drawn sample.
    picked = chosen_probs[which]
    labels = torch.multinomial(
        picked.reshape(-1, classes), 1, generator=generator
    ).view(count, chosen_probs.shape[1])
    # p_t(labels_m) for every t: gather each chosen input's probability of its drawn label.
    gathered = chosen_probs[:, torch.arange(chosen_probs.shape[1])[None, :], labels]  # (T, M, n)
    sampled_joint = gathered.prod(-1)
    proposal = sampled_joint.mean(0).clamp_min(torch.finfo(torch.float64).tiny)
    return sampled_joint, 1.0 / proposal


SCORES = {
    "bald": bald,
    "max_entropy": max_entropy,
    "variation_ratios": variation_ratios,
    "margin": margin,
    "mean_std": mean_std,
    "random": random,
}
"""Name -> score function for the per-input scores (``batch_bald`` builds a batch instead)."""
