"""Measure what dropout does inside a trained network: plain numbers and tensors, no plots.

The claims of Srivastava et al. (2014), "Dropout: a simple way to prevent neural
networks from overfitting", made measurable on a user's own model and data:

* :func:`co_adaptation`: do a layer's units depend on each other? Mean absolute
  correlation between units and the effective rank of the layer's activations.
* :func:`ablation_curve`: how does performance fall as a growing fraction of a
  layer's units is zeroed at test time (the paper's "team members leave" picture)?
* :func:`activation_sparsity`: how many activations are zero, and how large the
  mean activation is (Srivastava et al. 2014, section 7.2).
* :func:`generalization_gap`: train metric minus test metric.

Every function runs the model in eval mode under ``torch.no_grad()`` and restores
its training flags. ``data`` is an ``(inputs, targets)`` pair of tensors, a tensor
of inputs (where no targets are needed), or an iterable of such batches, e.g. a
``DataLoader``. ``layer`` is a submodule or its qualified name (``"net.1"``);
its output's units lie along ``unit_dim`` (1: features of ``(N, F)``, channels of
``(N, C, H, W)``; use -1 for ``(N, T, D)`` token features), all other dimensions
count as samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from dropkit._layers import validate_model

__all__ = [
    "AblationCurve",
    "ActivationSparsity",
    "CoAdaptation",
    "GeneralizationGap",
    "ablation_curve",
    "activation_sparsity",
    "co_adaptation",
    "generalization_gap",
]

Data = Union[Tensor, tuple, list, Iterable]
Layer = Union[str, nn.Module]
Metric = Union[str, Callable[[Tensor, Tensor], float]]


@dataclass(frozen=True)
class CoAdaptation:
    """How much a layer's units move together over a data set.

    Attributes:
        mean_abs_correlation: mean of ``|corr(unit_i, unit_j)|`` over pairs of live
            units, in [0, 1]. Lower: units carry less redundant, less co-adapted signal.
        effective_rank: Roy & Vetterli (2007), "The effective rank: a measure of
            effective dimensionality": ``exp(entropy)`` of the normalised singular
            values of the centred activations, between 1 and ``units``. Higher: the
            layer spreads information over more independent directions.
        units: number of units in the layer.
        dead_units: units constant over the data (e.g. ReLUs that never fire);
            they are left out of the correlation.
    """

    mean_abs_correlation: float
    effective_rank: float
    units: int
    dead_units: int


@dataclass(frozen=True)
class AblationCurve:
    """Metric (mean and standard deviation over trials) as a fraction of units is zeroed."""

    fractions: Tensor
    mean: Tensor
    std: Tensor

    @property
    def area(self) -> float:
        """Trapezoidal area under the mean curve divided by the fraction range: the
        average metric over the ablation range. A flatter curve has a larger area."""
        span = (self.fractions[-1] - self.fractions[0]).item()
        if len(self.fractions) < 2 or span == 0:
            return self.mean[0].item()
        return torch.trapezoid(self.mean, self.fractions).item() / span


@dataclass(frozen=True)
class ActivationSparsity:
    """How sparse a layer's activations are (Srivastava et al. 2014, section 7.2).

    Attributes:
        fraction_inactive: fraction of activations ``<= threshold`` (0 for ReLU units).
        mean_activation: mean activation over units and samples.
        unit_means: per-unit mean activation, shape ``(units,)``; its histogram is
            the paper's figure 8 (right).
    """

    fraction_inactive: float
    mean_activation: float
    unit_means: Tensor


@dataclass(frozen=True)
class GeneralizationGap:
    """Metric on training and test data; ``gap > 0`` means better on training data."""

    train: float
    test: float
    gap: float


# --------------------------------------------------------------------------- helpers


def _batches(data: Data, batch_size: int, caller: str) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
    if isinstance(data, Tensor):
        for chunk in data.split(batch_size):
            yield chunk, None
        return
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(
                f"{caller}: inputs and targets have to have the same length, but got "
                f"{len(inputs)} and {len(targets)}"
            )
        yield from zip(inputs.split(batch_size), targets.split(batch_size), strict=True)
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"{caller}: data has to be a tensor, an (inputs, targets) pair or an iterable of "
            f"batches, but got {type(data).__name__}"
        )
    for batch in data:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            raise TypeError(
                f"{caller}: each batch has to be a tensor or an (inputs, targets) pair, "
                f"but got {type(batch).__name__}"
            )


def _resolve_layer(model: nn.Module, layer: Layer, caller: str) -> nn.Module:
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(
                f"{caller}: the model has no submodule {layer!r}; it has {names[:20]}"
            ) from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{caller}: layer {type(layer).__name__} is not part of the model")
        return layer
    raise TypeError(f"{caller}: layer has to be a module or a name, but got {type(layer).__name__}")


def _validate_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} has to be an integer >= 1, but got {value!r}")
    return value


class _EvalMode:
    """Eval mode and no_grad for the measurement; the training flags come back after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.grad = torch.no_grad()

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad.__enter__()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.grad.__exit__(*exc)
        for module, training in self.flags:
            module.training = training


def _units_last(output: Tensor, unit_dim: int, caller: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{caller}: the layer's output has to be a tensor, but got {type(output).__name__}"
        )
    if output.dim() < 2 or not -output.dim() <= unit_dim < output.dim():
        raise ValueError(
            f"{caller}: unit_dim={unit_dim} is not a non-batch dimension of the layer's "
            f"output of shape {tuple(output.shape)}"
        )
    unit_dim %= output.dim()
    if unit_dim == 0:
        raise ValueError(f"{caller}: unit_dim=0 is the batch dimension; units lie along 1 or later")
    return output.movedim(unit_dim, -1).reshape(-1, output.shape[unit_dim])


def _activations(
    model: nn.Module, layer: Layer, data: Data, unit_dim: int, batch_size: int, caller: str
) -> Tensor:
    """The layer's outputs over ``data`` as a ``(samples, units)`` float64 matrix."""
    model = validate_model(model, caller)
    module = _resolve_layer(model, layer, caller)
    _validate_positive(batch_size, "batch_size")
    chunks: list[Tensor] = []
    handle = module.register_forward_hook(
        lambda m, i, o: chunks.append(_units_last(o, unit_dim, caller).double().cpu())
    )
    try:
        with _EvalMode(model):
            for x, _ in _batches(data, batch_size, caller):
                model(x)
    finally:
        handle.remove()
    if not chunks:
        raise ValueError(f"{caller}: data yielded no batches, or the layer was never called")
    return torch.cat(chunks)


# --------------------------------------------------------------------------- measurements


def co_adaptation(
    model: nn.Module, layer: Layer, data: Data, *, unit_dim: int = 1, batch_size: int = 512
) -> CoAdaptation:
    """Mean absolute correlation and effective rank of ``layer``'s units over ``data``.

    Srivastava et al. (2014) argue that dropout stops hidden units from
    co-adapting (relying on specific other units to fix their mistakes), so each
    unit learns a feature useful on its own. Lower correlation and a higher
    effective rank than the same network trained without dropout are what that
    predicts; compare models layer by layer on the same data.

    Example::

        >>> stats = dropkit.analysis.co_adaptation(model, "net.1", x_test)
        >>> stats.mean_abs_correlation, stats.effective_rank
    """
    acts = _activations(model, layer, data, unit_dim, batch_size, "co_adaptation")
    centred = acts - acts.mean(0)
    std = centred.pow(2).mean(0).sqrt()
    alive = std > 1e-12 * max(std.max().item(), 1.0)
    units = acts.shape[1]
    if int(alive.sum()) >= 2 and acts.shape[0] >= 2:
        correlation = torch.corrcoef(centred[:, alive].T)
        n = correlation.shape[0]
        off_diagonal = correlation.abs().sum() - correlation.diagonal().abs().sum()
        mean_abs_correlation = (off_diagonal / (n * (n - 1))).item()
    else:
        mean_abs_correlation = math.nan
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if total > 0:
        weights = singular / total
        weights = weights[weights > 0]
        effective_rank = math.exp(-(weights * weights.log()).sum().item())
    else:
        effective_rank = 0.0  # every unit constant: no direction carries information
    return CoAdaptation(mean_abs_correlation, effective_rank, units, units - int(alive.sum()))


def _metric_fn(metric: Metric, caller: str) -> Callable[[Tensor, Tensor], float]:
    if callable(metric):
        return metric
    if metric == "accuracy":
        return lambda outputs, targets: (outputs.argmax(-1) == targets).double().mean().item()
    if metric == "loss":
        return lambda outputs, targets: nn.functional.cross_entropy(outputs, targets).item()
    raise ValueError(
        f"{caller}: metric has to be 'accuracy', 'loss' or a callable(outputs, targets), "
        f"but got {metric!r}"
    )


def _evaluate(
    model: nn.Module, data: Data, metric: Callable[[Tensor, Tensor], float], batch_size: int,
    caller: str,
) -> float:
    outputs, targets = [], []
    for x, y in _batches(data, batch_size, caller):
        if y is None:
            raise ValueError(f"{caller}: data needs targets: pass (inputs, targets) batches")
        outputs.append(model(x))
        targets.append(y)
    if not outputs:
        raise ValueError(f"{caller}: data yielded no batches")
    return float(metric(torch.cat(outputs), torch.cat(targets)))


def ablation_curve(
    model: nn.Module,
    layer: Layer,
    data: Data,
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    trials: int = 10,
    seed: int = 0,
    metric: Metric = "accuracy",
    unit_dim: int = 1,
    rescale: bool = False,
    batch_size: int = 512,
) -> AblationCurve:
    """Metric on ``data`` as a growing fraction of ``layer``'s units is zeroed at test time.

    For each fraction ``f``, ``round(f * units)`` units chosen at random are set to
    zero for the whole data set (no rescaling, unless ``rescale=True`` multiplies
    the survivors by ``units / kept``), ``trials`` times with different random
    subsets; the subsets depend only on ``seed``, so two models with the same
    layer width are ablated identically. A network trained with dropout is
    expected to degrade more gracefully (a flatter curve, larger ``area``):
    it learnt to work with any subset of its units.

    Args:
        fractions: ablated fractions, increasing, each in ``[0, 1]``.
        trials: random unit subsets per fraction.
        metric: ``"accuracy"`` (argmax of the last output dimension), ``"loss"``
            (cross-entropy) or ``callable(outputs, targets) -> float``.

    Example::

        >>> curve = dropkit.analysis.ablation_curve(model, "net.4", (x_test, y_test))
        >>> curve.mean      # accuracy at 0%, 10%, ... 90% of units removed
    """
    caller = "ablation_curve"
    model = validate_model(model, caller)
    module = _resolve_layer(model, layer, caller)
    _validate_positive(trials, "trials")
    _validate_positive(batch_size, "batch_size")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(
            f"fractions have to be a non-empty sequence in [0, 1], but got {fractions}"
        )
    if any(a > b for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError(f"fractions have to increase, but got {fractions}")
    score = _metric_fn(metric, caller)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Optional[Tensor]] = {"keep": None}

    def ablate(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        keep = state["keep"]
        if keep is None:
            return output
        shape = [1] * output.dim()
        shape[unit_dim % output.dim()] = keep.numel()
        return output * keep.to(output.device, output.dtype).view(shape)

    with _EvalMode(model):
        probe: dict[str, torch.Size] = {}

        def record_shape(m: nn.Module, inputs: tuple, output: Tensor) -> None:
            probe.setdefault("shape", output.shape)

        handle = module.register_forward_hook(record_shape)
        try:
            first_x, _ = next(iter(_batches(data, batch_size, caller)))
            model(first_x)
        finally:
            handle.remove()
        units = _units_last(torch.empty(probe["shape"], device="meta"), unit_dim, caller).shape[1]
        handle = module.register_forward_hook(ablate)
        means, stds = [], []
        try:
            for fraction in fractions:
                dropped = round(fraction * units)
                values = []
                for _ in range(trials if 0 < dropped < units else 1):
                    keep = torch.ones(units, dtype=torch.float64)
                    keep[torch.randperm(units, generator=generator)[:dropped]] = 0.0
                    if rescale and dropped < units:
                        keep *= units / (units - dropped)
                    state["keep"] = keep
                    values.append(_evaluate(model, data, score, batch_size, caller))
                as_tensor = torch.tensor(values, dtype=torch.float64)
                means.append(as_tensor.mean())
                stds.append(as_tensor.std(unbiased=False))
        finally:
            handle.remove()
    return AblationCurve(
        torch.tensor(fractions, dtype=torch.float64), torch.stack(means), torch.stack(stds)
    )


def activation_sparsity(
    model: nn.Module,
    layer: Layer,
    data: Data,
    *,
    threshold: float = 0.0,
    unit_dim: int = 1,
    batch_size: int = 512,
) -> ActivationSparsity:
    """Fraction of inactive activations and mean activation of ``layer`` over ``data``.

    Srivastava et al. (2014, section 7.2) observed that dropout makes hidden
    activations sparse as a side effect: more units are inactive and the mean
    activation is lower than without dropout. Measure it on a post-activation
    layer (e.g. the ``nn.ReLU``), where ``threshold=0`` counts exact zeros.

    Example::

        >>> s = dropkit.analysis.activation_sparsity(model, "net.1", x_test)
        >>> s.fraction_inactive, s.mean_activation
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold has to be a number, but got {threshold!r}")
    acts = _activations(model, layer, data, unit_dim, batch_size, "activation_sparsity")
    return ActivationSparsity(
        fraction_inactive=(acts <= threshold).double().mean().item(),
        mean_activation=acts.mean().item(),
        unit_means=acts.mean(0),
    )


def generalization_gap(
    model: nn.Module,
    train_data: Data,
    test_data: Data,
    *,
    metric: Metric = "accuracy",
    higher_is_better: Optional[bool] = None,
    batch_size: int = 512,
) -> GeneralizationGap:
    """The metric on training and on test data, and the gap between them.

    ``gap`` is positive when the model does better on its training data:
    ``train - test`` for accuracy-like metrics, ``test - train`` for losses.
    ``higher_is_better`` defaults to ``True`` for ``"accuracy"`` and callables and
    ``False`` for ``"loss"``. Dropout is meant to shrink the gap.

    Example::

        >>> g = dropkit.analysis.generalization_gap(model, (x_train, y_train), (x_test, y_test))
        >>> g.train, g.test, g.gap
    """
    caller = "generalization_gap"
    model = validate_model(model, caller)
    _validate_positive(batch_size, "batch_size")
    score = _metric_fn(metric, caller)
    if higher_is_better is None:
        higher_is_better = metric != "loss"
    with _EvalMode(model):
        train = _evaluate(model, train_data, score, batch_size, caller)
        test = _evaluate(model, test_data, score, batch_size, caller)
    return GeneralizationGap(train, test, train - test if higher_is_better else test - train)
