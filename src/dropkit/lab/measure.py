"""Final measurements of a trained run, and the ONE seam between the lab and the library.

Measured here directly, on the lab's own models:

* unit-ablation robustness: the test metric as a growing fraction of the
  hidden units feeding ``model.head`` is zeroed (the same units for every
  example: team members who leave);
* MC averaging vs weight scaling: the test metric of the eval-mode network
  (weight scaling, Srivastava et al., 2014 s.10) against the average of T
  stochastic passes with only the dropout layers in train mode;
* BatchNorm variance shift (Li et al., 2019): for every BatchNorm layer, the
  variance it normalises with (running, learnt with dropout on) over the
  variance its input has at test time (dropout off).

Delegated to the library (``dropkit.analysis``, ``dropkit.check``,
``dropkit.mc``, ``dropkit.metrics``), imported by name: every such call lives
in the ``_library_*`` functions below, so a renamed API is fixed here only,
and a bug in either side fails loudly instead of becoming a note in a report.
A measurement is recorded as ``{"not_measured": "<why>"}`` only for a reason
the report can state (the model has no ``.hidden`` block, no active dropout).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dropkit import analysis, calibration, conformal, mc, metrics
from dropkit.check import check as check_model
from dropkit.check import variance_shift
from dropkit.lab.tasks import Task, TaskData
from dropkit.mc import is_stochastic

__all__ = [
    "ABLATION_FRACTIONS",
    "ablation_curve",
    "bn_variance_shift",
    "dropout_layers",
    "final_measurements",
    "hidden_activations",
    "mc_vs_weight_scaling",
    "not_measured",
]

ABLATION_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
_EVAL_BATCH = 512
_LM_WINDOWS = 32
#: Fractions of the most uncertain test cases referred to a human, for the referral curve.
_REFERRED: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(19))


def not_measured(reason: str) -> dict:
    return {"not_measured": reason}


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """Stochastic layers, by dropkit's one predicate (:func:`dropkit.mc.is_stochastic`)."""
    return [module for module in model.modules() if is_stochastic(module)]


@contextlib.contextmanager
def _mc_mode(model: nn.Module) -> Iterator[nn.Module]:
    # Only dropout samples; BatchNorm keeps its running statistics (eval mode).
    was_training = model.training
    model.eval()
    for layer in dropout_layers(model):
        layer.train()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _outputs(model: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([model(chunk) for chunk in x.split(_EVAL_BATCH)])


@torch.no_grad()
def hidden_activations(model: nn.Module, x: Tensor) -> Tensor:
    """The eval-mode input of ``model.head`` (the last hidden representation), ``(N, units)``."""
    captured: list[Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    try:
        model.eval()
        _outputs(model, x)
    finally:
        handle.remove()
    # Sequence models give (N, T, units): every time step is one sample of the units.
    return torch.cat(captured).reshape(-1, model.head.in_features)


@torch.no_grad()
def ablation_curve(
    task: Task,
    model: nn.Module,
    data: TaskData,
    fractions: Sequence[float] = ABLATION_FRACTIONS,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Test metric when a fraction of ``model.head``'s input units is zeroed, averaged over draws.

    No rescaling of the survivors: this is removal, not dropout, so it shows
    how much the network relies on any particular unit.
    """
    model.eval()
    units = model.head.in_features
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for fraction in fractions:
        scores = []
        for _ in range(repeats if fraction > 0 else 1):
            keep = torch.ones(units)
            keep[torch.randperm(units, generator=generator)[: round(fraction * units)]] = 0
            handle = model.head.register_forward_pre_hook(lambda _, i, k=keep: (i[0] * k,))
            try:
                outputs = _outputs(model, data.x_test)
            finally:
                handle.remove()
            scores.append(task.score(outputs, data.y_test, data.y_scale))
        curve.append(sum(scores) / len(scores))
    return {"fractions": list(fractions), "metric": curve}


def _combine(task: Task, samples: list[Tensor]) -> Tensor:
    if task.kind != "regression":
        # The ensemble averages predictive distributions, then we score the mean.
        return torch.stack([s.softmax(-1) for s in samples]).mean(0).log()
    return torch.stack(samples).mean(0)


@torch.no_grad()
def mc_vs_weight_scaling(
    task: Task, model: nn.Module, data: TaskData, samples: int, seed: int = 0
) -> dict:
    """Test metric of weight scaling, of single stochastic passes, and of MC averages of T passes.

    ``mc[T]`` averages the first T passes for T in 1, 2, 5, 10, ... up to
    ``samples``, so one set of passes gives the whole convergence curve.
    """
    if not any(layer.p > 0 for layer in dropout_layers(model)):
        return not_measured("the model has no active dropout (p = 0)")
    model.eval()
    weight_scaling = task.score(_outputs(model, data.x_test), data.y_test, data.y_scale)
    torch.manual_seed(seed)
    passes: list[Tensor] = []
    with _mc_mode(model):
        for _ in range(samples):
            passes.append(_outputs(model, data.x_test))
    checkpoints = sorted({t for t in (1, 2, 5, 10, 20, 50, 100, samples) if t <= samples})
    mc = {str(t): task.score(_combine(task, passes[:t]), data.y_test, data.y_scale)
          for t in checkpoints}
    single = [task.score(out, data.y_test, data.y_scale) for out in passes]
    return {
        "weight_scaling": weight_scaling,
        "single_pass_mean": sum(single) / len(single),
        "single_pass_std": float(torch.tensor(single).std()) if len(single) > 1 else 0.0,
        "mc": mc,
        "samples": samples,
    }


def _follows_dropout(model: nn.Module) -> dict[str, bool]:
    # Registration order approximates execution order for the lab's sequential models.
    # Structural (any p, even 0), so the same layer keeps one label across a sweep over p.
    stochastic = {id(layer) for layer in dropout_layers(model)}
    seen_dropout, after = False, {}
    for name, module in model.named_modules():
        if id(module) in stochastic:
            seen_dropout = True
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            after[name] = seen_dropout
    return after


@torch.no_grad()
def bn_variance_shift(model: nn.Module, x: Tensor) -> list[dict]:
    """Per BatchNorm layer: mean over channels of running_var / test-time input variance."""
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    if not layers:
        return []
    inputs: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = [
        module.register_forward_pre_hook(lambda _, i, n=name: inputs[n].append(i[0]))
        for name, module in layers.items()
    ]
    try:
        model.eval()
        _outputs(model, x)
    finally:
        for handle in handles:
            handle.remove()
    after = _follows_dropout(model)
    result = []
    for name, module in layers.items():
        activations = torch.cat(inputs[name]).transpose(0, 1).flatten(1)
        test_var = activations.var(1, unbiased=False).clamp_min(1e-12)
        ratio = (module.running_var / test_var).mean().item()
        result.append({"layer": name, "after_dropout": after[name], "ratio": ratio})
    return result


# --- the library, imported by name -------------------------------------------------


def _plain(value: Any) -> Any:
    """Turn a library result (dataclass, namedtuple, tensor, dict) into JSON-able numbers."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):
        return _plain(value._asdict())
    if hasattr(value, "__dataclass_fields__"):
        return _plain({k: getattr(value, k) for k in value.__dataclass_fields__})
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _feature_layer(model: nn.Module) -> Any:
    # The lab's models name the block whose (eval-mode) output feeds ``model.head``
    # ``model.hidden``: the representation ablated and probed for co-adaptation.
    layer = getattr(model, "hidden", None)
    return layer if isinstance(layer, nn.Module) else None


def _library_co_adaptation(model: nn.Module, x: Tensor) -> dict:
    layer = _feature_layer(model)
    if layer is None:
        return not_measured("the model has no .hidden block feeding its head")
    # unit_dim=-1: units are the last dimension for dense (N, H) and sequence (N, T, H).
    stats = analysis.co_adaptation(model, layer, x, unit_dim=-1, batch_size=_EVAL_BATCH)
    sparsity = analysis.activation_sparsity(model, layer, x, unit_dim=-1,
                                            batch_size=_EVAL_BATCH)
    return _plain({
        "mean_abs_correlation": stats.mean_abs_correlation,
        "effective_rank": stats.effective_rank,
        "dead_units": stats.dead_units,
        "fraction_inactive": sparsity.fraction_inactive,
        "mean_activation": sparsity.mean_activation,
    })


def _library_ablation(task: Task, model: nn.Module, data: TaskData, seed: int) -> dict:
    """Unit ablation by ``dropkit.analysis.ablation_curve`` on ``model.hidden``; the lab's own
    :func:`ablation_curve` (the same measurement on ``model.head``'s input) for a model
    without a ``.hidden`` block."""
    layer = _feature_layer(model)
    if layer is None:
        return {**ablation_curve(task, model, data, seed=seed),
                "source": "dropkit.lab.measure.ablation_curve (no .hidden block)"}
    curve = analysis.ablation_curve(
        model, layer, (data.x_test, data.y_test), ABLATION_FRACTIONS, trials=5, seed=seed,
        metric=lambda outputs, targets: task.score(outputs, targets, data.y_scale),
        unit_dim=-1, batch_size=_EVAL_BATCH,
    )
    return {
        "fractions": curve.fractions.tolist(), "metric": curve.mean.tolist(),
        "std": curve.std.tolist(), "area": curve.area,
        "source": "dropkit.analysis.ablation_curve",
    }


def _library_variance_shift(model: nn.Module, x: Tensor, layers: list[dict]) -> list[dict]:
    """Adds ``dropkit.check.variance_shift``'s per-layer shift (mean over channels of
    max(r, 1/r), Li et al., 2019) to the lab's own ratios, as ``library_shift``."""
    if not layers:
        return layers
    shifts = variance_shift(model, x)
    return [{**layer, "library_shift": _plain(shifts[layer["layer"]])} for layer in layers]


def _library_check(model: nn.Module, example: Tensor) -> list[dict]:
    return [
        {"severity": str(f.severity), "code": str(f.code), "module": str(f.module),
         "message": str(f.message), "fix": str(f.fix)}
        for f in check_model(model, example)
    ]


def _library_uncertainty(task: Task, model: nn.Module, data: TaskData, samples: int, seed: int,
                         tau: float) -> dict:
    model.eval()

    def classification() -> dict:
        result = mc.predict(model, data.x_test, samples=samples, seed=seed, task="classification")
        probs, y = result.mean, data.y_test
        # Referral: answer the least uncertain patients first (predictive entropy).
        selective = metrics.selective_prediction(result.predictive_entropy, result.predicted == y)
        bins = metrics.reliability_bins(probs, y)  # the bins behind "ece": one binning
        return {
            "nll": _plain(metrics.nll(probs, y)),
            "brier": _plain(metrics.brier_score(probs, y)),
            "ece": _plain(metrics.expected_calibration_error(probs, y)),
            "selective": {
                "area": selective.area,
                **{f"accuracy_at_{round(100 * c)}%": selective.accuracy_at(c)
                   for c in (1.0, 0.9, 0.8, 0.5)},
            },
            # The report's reliability diagram and referral curve (docs/lab.md, The report).
            "reliability": {"count": bins.count.tolist(),
                            "accuracy": _plain(bins.accuracy.tolist()),
                            "confidence": _plain(bins.confidence.tolist())},
            "referral": {"referred": list(_REFERRED),
                         "accuracy": [selective.accuracy_at(1.0 - r) for r in _REFERRED]},
            **calibrated_classification(model, data, probs, samples, seed),
        }

    def regression() -> dict:
        result = mc.predict(model, data.x_test, samples=samples, seed=seed, task="regression",
                            tau=tau)
        mean, variance = result.mean.squeeze(-1), result.variance.squeeze(-1)
        scale = data.y_scale
        return {
            "rmse": _plain(metrics.rmse(mean * scale, data.y_test * scale)),
            # In the target's units: samples and targets scaled, noise precision / scale^2.
            "log_likelihood": _plain(metrics.mc_log_likelihood(
                result.samples.squeeze(-1) * scale, data.y_test * scale, tau / scale**2)),
            "coverage_95": _plain(metrics.interval_coverage(
                mean, variance, data.y_test, level=0.95)),
            **conformal_regression(model, data, mean, variance, samples, seed, tau),
        }

    return classification() if task.kind == "classification" else regression()


def _validation_ready(data: TaskData) -> bool:
    # The calibration fits refuse fewer than 20 examples; say why instead of failing.
    return data.x_val is not None and len(data.x_val) >= 20


def calibrated_classification(
    model: nn.Module, data: TaskData, test_probs: Tensor, samples: int, seed: int
) -> dict:
    """Temperature scaling and APS prediction sets fitted on the validation split.

    The MC-averaged validation probabilities fit one temperature (Guo et al., 2017)
    and the APS conformal threshold at alpha = 0.1 (Angelopoulos et al., 2021); both
    are applied to the test probabilities. The report draws the reliability diagram
    before and after, and the coverage the sets achieve.
    """
    if not _validation_ready(data):
        return {"calibration_note": "no validation split of >= 20 examples to fit on"}
    val = mc.predict(model, data.x_val, samples=samples, seed=seed + 1, task="classification")
    scaler = calibration.TemperatureScaler(inputs="probs").fit(val.mean, data.y_val)
    scaled = scaler.transform(test_probs).to(test_probs.dtype)
    bins = metrics.reliability_bins(scaled, data.y_test)
    sets = conformal.ConformalClassifier(0.1, method="aps", randomized=False).fit(
        val.mean, data.y_val).predict(test_probs)
    return {
        "temperature": _plain(scaler.temperature),
        "after_temperature": {
            "nll": _plain(metrics.nll(scaled, data.y_test)),
            "ece": _plain(metrics.expected_calibration_error(scaled, data.y_test)),
            "reliability": {"count": bins.count.tolist(),
                            "accuracy": _plain(bins.accuracy.tolist()),
                            "confidence": _plain(bins.confidence.tolist())},
        },
        "conformal": {"alpha": 0.1, "method": "aps", "calibration_examples": len(data.y_val),
                      "coverage": _plain(conformal.coverage(sets, data.y_test)),
                      "mean_set_size": _plain(float(conformal.set_sizes(sets).float().mean()))},
    }


def conformal_regression(model: nn.Module, data: TaskData, mean: Tensor, variance: Tensor,
                         samples: int, seed: int, tau: float) -> dict:
    """Split-conformal intervals at alpha = 0.1 from MC mean and std (normalised scores),
    calibrated on the validation split: the coverage they achieve on the test set."""
    if not _validation_ready(data):
        return {"calibration_note": "no validation split of >= 20 examples to fit on"}
    val = mc.predict(model, data.x_val, samples=samples, seed=seed + 1, task="regression",
                     tau=tau)
    regressor = conformal.ConformalRegressor(0.1).fit(
        val.mean.squeeze(-1), val.variance.squeeze(-1).sqrt(), data.y_val)
    lower, upper = regressor.predict(mean, variance.sqrt())
    covered = ((data.y_test >= lower) & (data.y_test <= upper)).double().mean()
    return {"conformal": {"alpha": 0.1, "score": "normalized",
                          "calibration_examples": len(data.y_val),
                          "coverage": _plain(float(covered)),
                          "mean_width": _plain(float((upper - lower).mean() * data.y_scale))}}


# --- everything for one finished run -------------------------------------------------


def final_measurements(
    task: Task, model: nn.Module, data: TaskData, *, seed: int, mc_samples: int
) -> dict[str, Any]:
    """All end-of-run measurements, keyed by name, JSON-able."""
    test = data
    if task.kind == "language_model":
        # (windows, time, vocabulary) outputs: MC passes and ablation trials keep several
        # sets of them, so these measurements use the first test windows only.
        test = TaskData(data.x_train, data.y_train, data.x_test[:_LM_WINDOWS],
                        data.y_test[:_LM_WINDOWS], data.y_scale)
    measurements: dict[str, Any] = {
        "ablation": _library_ablation(task, model, test, seed),
        "mc_vs_weight_scaling": mc_vs_weight_scaling(task, model, test, mc_samples, seed=seed),
        "bn_variance_shift": _library_variance_shift(
            model, data.x_test[:_EVAL_BATCH], bn_variance_shift(model, data.x_test)
        ),
        "co_adaptation": _library_co_adaptation(model, test.x_test),
        "check": _library_check(model, data.x_test[:64]),
        "data_notes": list(data.notes),
    }
    if test is not data:
        measurements["measured_on"] = (
            f"ablation, MC averaging and co-adaptation on the first {len(test.x_test)} of "
            f"{len(data.x_test)} test windows"
        )
    if task.uncertainty:
        # Gaussian noise precision for MC regression: the inverse of the training residual
        # variance (standardised units), a plug-in estimate instead of a grid search.
        tau = 0.0
        if task.kind == "regression":
            model.eval()
            residual = _outputs(model, data.x_train).squeeze(-1) - data.y_train
            tau = 1.0 / max(residual.pow(2).mean().item(), 1e-6)
        measurements["uncertainty"] = _library_uncertainty(
            task, model, data, mc_samples, seed, tau
        )
    model.eval()
    return measurements
