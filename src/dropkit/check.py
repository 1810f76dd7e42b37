"""Check where and how a model uses dropout, with a fix for each problem found.

:func:`check` returns :class:`Finding` s for: dropout feeding a BatchNorm layer
(the "variance shift" of Li et al., 2019, measured when an example input is
given), dropout left active in eval mode, in-place dropout that overwrites a
tensor autograd saved for backward, rates outside the usual range, and DropPath
whose output is not added to a skip connection. :func:`recalibrate_batchnorm` is
the documented fix for the variance shift and :func:`variance_shift` measures it.

Reference: Li, Chen, Hu & Yang (2019), "Understanding the disharmony between
dropout and batch normalization by variance shift", CVPR. During training a
BatchNorm layer after dropout normalises, and accumulates running statistics
of, the variance of *noisy* activations; at inference dropout is off, the
variance of its input is different, and the stored statistics no longer match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dropkit._layers import display_name, dropout_layers, rate, validate_model

__all__ = ["Finding", "check", "recalibrate_batchnorm", "variance_shift"]

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
ExampleInput = Union[Tensor, tuple, list]

# The usual range of drop rates: Srivastava et al. (2014) use 0.5 for hidden
# units and 0.2 for inputs; transformers and DropPath use 0.1-0.3.
_USUAL_P = (0.1, 0.5)

# Activations whose backward reads their *output* (found with saved-tensor hooks
# on torch 2.x): dropout applied in place right after them corrupts that output.
_RESULT_SAVING = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax, nn.Softmin)

_DROP_PATH_NAMES = ("DropPath", "StochasticDepth")


@dataclass(frozen=True)
class Finding:
    """One problem (or remark) about a model's dropout, with how to fix it.

    Attributes:
        severity: ``"error"`` (wrong results or a crash), ``"warning"`` (likely
            hurts accuracy), ``"info"`` (unusual; fine if deliberate).
        code: a stable identifier, e.g. ``"dropout-before-batchnorm"``.
        module: qualified name of the module concerned (``"<root>"`` for the model).
        message: what is wrong, with measured numbers where there are some.
        fix: what to change.
        measured: the numbers behind the message (empty when nothing was measured).
    """

    severity: Severity
    code: str
    module: str
    message: str
    fix: str
    measured: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code} at {self.module}: {self.message} Fix: {self.fix}"


# --------------------------------------------------------------------------- helpers


def _example_args(example_input: ExampleInput) -> tuple:
    if isinstance(example_input, Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and example_input:
        return tuple(example_input)
    raise TypeError(
        "example_input has to be a tensor or a non-empty tuple of forward() arguments, "
        f"but got {type(example_input).__name__}"
    )


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _batchnorms(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


@contextlib.contextmanager
def _preserved(model: nn.Module, args: tuple) -> Iterator[None]:
    """Run probes without leaving a trace: training flags, buffers and RNG are restored."""
    flags = [(m, m.training) for m in model.modules()]
    # Every buffer, not only BatchNorm's: training-mode passes also move the running
    # statistics of InstanceNorm(track_running_stats=True) and of user modules.
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    devices = sorted({t.device.index or 0 for t in _tensors(args) if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for module, training in flags:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _run(model: nn.Module, args: tuple) -> Any:
    try:
        return model(*args)
    except Exception as error:  # noqa: BLE001 - re-raised with the context a user needs
        raise RuntimeError(
            f"check: the model's forward failed on example_input ({type(error).__name__}: {error})"
        ) from error


def _channel_variance(x: Tensor) -> Tensor:
    # BatchNorm normalises each channel (dim 1) over the batch and all spatial positions.
    dims = [d for d in range(x.dim()) if d != 1]
    return x.detach().double().var(dim=dims, unbiased=False)


def _bn_input_variances(
    model: nn.Module, args: tuple, bns: list[tuple[str, _BatchNorm]]
) -> dict[str, Tensor]:
    variances: dict[str, Tensor] = {}
    handles = []
    for name, bn in bns:

        def record(module: nn.Module, inputs: tuple, name: str = name) -> None:
            variances.setdefault(name, _channel_variance(inputs[0]))

        handles.append(bn.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            _run(model, args)
    finally:
        for handle in handles:
            handle.remove()
    return variances


def _li_shift(real: Tensor, stored: Tensor) -> float:
    # max(r, 1/r) per channel so over- and under-estimated variances count alike;
    # 1.0 means BN's stored variance matches what it sees at inference.
    ratio = (real.clamp_min(1e-12) / stored.double().clamp_min(1e-12))
    return torch.maximum(ratio, ratio.reciprocal()).mean().item()


def variance_shift(model: nn.Module, example_input: ExampleInput) -> dict[str, float]:
    """Per BatchNorm layer: how far its running variance is from the variance it sees at inference.

    The model runs in eval mode on ``example_input``; for each BatchNorm layer
    with running statistics, channel ``c``'s ratio ``r_c = var(input_c) /
    running_var_c`` is taken as ``max(r_c, 1/r_c)`` and averaged over channels.
    1.0 means the statistics fit; dropout before BatchNorm typically gives > 1
    (Li et al., 2019), and :func:`recalibrate_batchnorm` brings it back towards 1.
    Layers that never saw a training batch (``num_batches_tracked == 0``) are left out.

    Returns:
        ``{qualified BN name: shift}``; the model's state is left as it was.

    Example::

        >>> dropkit.variance_shift(model, x_val)   # {'net.3': 1.62}
    """
    model = validate_model(model, "variance_shift")
    args = _example_args(example_input)
    bns = [(n, bn) for n, bn in _batchnorms(model) if _has_statistics(bn)]
    with _preserved(model, args):
        model.eval()
        real = _bn_input_variances(model, args, bns)
    return {
        display_name(n): _li_shift(real[n], bn.running_var) for n, bn in bns if n in real
    }


def _has_statistics(bn: _BatchNorm) -> bool:
    tracked = bn.num_batches_tracked
    return (
        bn.track_running_stats
        and bn.running_var is not None
        and (tracked is None or int(tracked) > 0)
    )


# --------------------------------------------------------------------------- recalibration


def _batch_input(batch: Any) -> tuple:
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return (batch[0],)
    raise TypeError(
        "recalibrate_batchnorm: each batch has to be a tensor or an (inputs, targets) "
        f"tuple/list, but got {type(batch).__name__}"
    )


def recalibrate_batchnorm(
    model: nn.Module,
    loader: Iterable,
    *,
    num_batches: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics with dropout switched off.

    The fix for dropout placed before BatchNorm (Li et al., 2019): after training,
    run training data through the model with every dropout layer in eval mode and
    the BatchNorm layers accumulating a plain average of batch statistics
    (``momentum=None``), so the stored mean and variance describe the activations
    BN will see at inference. Like ``torch.optim.swa_utils.update_bn`` but with
    dropout off. Parameters are not changed; training flags and BN momenta are
    restored.

    Args:
        model: a model containing BatchNorm layers with ``track_running_stats=True``.
        loader: an iterable of input batches or ``(inputs, targets)`` pairs, e.g.
            the training ``DataLoader``.
        num_batches: use only the first ``num_batches`` batches.
        device: move inputs here first (default: where they are).

    Returns:
        ``model``, recalibrated in place.

    Example::

        >>> dropkit.recalibrate_batchnorm(model, train_loader, num_batches=100)
        >>> model.eval()   # inference now uses statistics without dropout noise
    """
    model = validate_model(model, "recalibrate_batchnorm")
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(f"num_batches has to be an integer >= 1 or None, but got {num_batches!r}")
    bns = [bn for _, bn in _batchnorms(model) if bn.track_running_stats]
    if not bns:
        raise ValueError(
            "recalibrate_batchnorm: the model has no BatchNorm layer with "
            "track_running_stats=True, so there is nothing to recalibrate"
        )
    flags = [(m, m.training) for m in model.modules()]
    momenta = [bn.momentum for bn in bns]
    seen = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over all batches
            bn.train()
        with torch.no_grad():
            for batch in loader:
                if num_batches is not None and seen >= num_batches:
                    break
                args = _batch_input(batch)
                if device is not None:
                    args = tuple(a.to(device) for a in args)
                model(*args)
                seen += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        for module, training in flags:
            module.training = training
    if seen == 0:
        raise ValueError("recalibrate_batchnorm: loader yielded no batches")
    return model


# --------------------------------------------------------------------------- the probe


@dataclass
class _Probe:
    """What one training-mode forward pass with hooks revealed."""

    order: list[str] = field(default_factory=list)
    overwrites_saved: dict[str, str] = field(default_factory=dict)
    drop_path_consumers: dict[str, Optional[list[str]]] = field(default_factory=dict)
    train_variances: dict[str, Tensor] = field(default_factory=dict)


def _graph_consumers(outputs: list[Tensor]) -> dict[Any, list[Any]]:
    consumers: dict[Any, list[Any]] = {}
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                consumers.setdefault(child, []).append(node)
                stack.append(child)
    return consumers


def _probe(
    model: nn.Module, args: tuple, dropouts: dict[str, nn.Module], paths: list[str]
) -> _Probe:
    probe = _Probe()
    bns = _batchnorms(model)
    saved: list[Tensor] = []
    path_nodes: dict[str, Any] = {}
    handles = []

    calls: list[str] = []

    def called(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            calls.append(name)
            if name not in probe.order:
                probe.order.append(name)
            if getattr(module, "inplace", False) and inputs and isinstance(inputs[0], Tensor):
                pointer = inputs[0].untyped_storage().data_ptr()
                # A tensor saved for backward and then overwritten in place makes
                # backward raise "modified by an inplace operation".
                if any(s.untyped_storage().data_ptr() == pointer for s in saved):
                    producer = f"'{calls[-2]}'" if len(calls) > 1 else "the previous op"
                    probe.overwrites_saved.setdefault(name, producer)

        return hook

    def mark_output(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            if isinstance(output, Tensor) and output.requires_grad:
                # A view gives this module's output its own autograd node, whose
                # consumers tell whether the branch is added to a skip connection.
                output = output.view_as(output)
                path_nodes[name] = output.grad_fn
            return output

        return hook

    for name, module in model.named_modules():
        if not list(module.children()) or name in dropouts:
            handles.append(module.register_forward_pre_hook(called(display_name(name))))
    for name in paths:
        handles.append(model.get_submodule(name).register_forward_hook(mark_output(name)))
    for name, bn in bns:

        def record(module: nn.Module, inputs: tuple, name: str = name) -> None:
            probe.train_variances.setdefault(name, _channel_variance(inputs[0]))

        handles.append(bn.register_forward_pre_hook(record))

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    try:
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = list(_tensors(_run(model, args)))
    finally:
        for handle in handles:
            handle.remove()
    consumers = _graph_consumers(outputs)
    for name, node in path_nodes.items():
        probe.drop_path_consumers[name] = [c.name() for c in consumers.get(node, [])]
    return probe


def _same_outputs(first: Any, second: Any) -> bool:
    a, b = list(_tensors(first)), list(_tensors(second))
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- the checks


def _rate_findings(dropouts: dict[str, nn.Module]) -> list[Finding]:
    findings = []
    low, high = _USUAL_P
    for name, module in dropouts.items():
        p = float(module.p)
        where = display_name(name)
        measured = {"p": p}
        if p == 1.0:
            findings.append(Finding(
                "error", "rate-out-of-range", where,
                "p=1.0 drops every unit: the layer outputs zeros in training and nothing is learnt "
                "through it.",
                f"use a rate in the usual {low}-{high} range.", measured,
            ))
        elif p == 0.0:
            findings.append(Finding(
                "info", "rate-out-of-range", where,
                "p=0.0: the layer does nothing.",
                "remove it, or ignore this if a schedule sets the rate later.", measured,
            ))
        elif p > high:
            findings.append(Finding(
                "warning", "rate-out-of-range", where,
                f"p={p} is above the usual {low}-{high} range; the network keeps few units per "
                "step and may underfit or converge slowly.",
                f"try p <= {high} (Srivastava et al. 2014 use 0.5 on hidden units, 0.2 on inputs).",
                measured,
            ))
        elif p < low:
            findings.append(Finding(
                "info", "rate-out-of-range", where,
                f"p={p} is below the usual {low}-{high} range and regularises little.",
                f"fine for large models or DropPath; otherwise try p >= {low}.", measured,
            ))
    return findings


def _static_predecessors(model: nn.Module) -> dict[int, nn.Module]:
    """For each child, the sibling registered just before it (a Sequential's data flow)."""
    previous: dict[int, nn.Module] = {}
    for parent in model.modules():
        children = [c for c in parent._modules.values() if c is not None]
        for before, after in zip(children, children[1:], strict=False):
            previous.setdefault(id(after), before)
    return previous


def _inplace_findings(
    model: nn.Module, dropouts: dict[str, nn.Module], probe: Optional[_Probe]
) -> list[Finding]:
    findings = []
    fix = ("use inplace=False for this dropout layer (the memory saved is one activation), "
           "or the inplace variant of the previous activation instead.")
    if probe is not None:
        for name, producer in probe.overwrites_saved.items():
            findings.append(Finding(
                "error", "inplace-overwrites-saved-tensor", name,
                f"in-place dropout overwrites the output of {producer}, which autograd saved "
                "for backward: loss.backward() will raise 'modified by an inplace operation'.",
                fix,
            ))
        return findings
    previous = _static_predecessors(model)
    for name, module in dropouts.items():
        before = previous.get(id(module))
        if getattr(module, "inplace", False) and isinstance(before, _RESULT_SAVING):
            findings.append(Finding(
                "error", "inplace-overwrites-saved-tensor", display_name(name),
                f"in-place dropout right after {type(before).__name__}, whose backward reads "
                "its output: loss.backward() will raise 'modified by an inplace operation'.",
                fix,
            ))
    return findings


def _batchnorm_findings(
    model: nn.Module,
    args: Optional[tuple],
    dropouts: dict[str, nn.Module],
    probe: Optional[_Probe],
    shift: dict[str, float],
) -> list[Finding]:
    bns = _batchnorms(model)
    if not bns:
        return []
    bn_names = {display_name(n) for n, _ in bns}
    if probe is not None:
        order = probe.order
        how, note = "runs before", ""
    else:
        order = [display_name(n) for n, _ in model.named_modules()]
        how = "is registered before"
        note = " Order taken from registration; pass example_input to confirm and measure."
    position = {name: i for i, name in enumerate(order)}
    ratio: dict[str, float] = {}
    if probe is not None and args is not None:
        no_dropout = _no_dropout_variances(model, args, dropouts)
        for name, train_var in probe.train_variances.items():
            if name in no_dropout:
                ratio[display_name(name)] = (
                    train_var / no_dropout[name].clamp_min(1e-12)
                ).mean().item()
    findings = []
    for name, module in dropouts.items():
        where = display_name(name)
        if float(module.p) == 0.0 or where not in position:
            continue
        after = [n for n in order[position[where] + 1:] if n in bn_names]
        if not after:
            continue
        first = after[0]
        measured: dict[str, float] = {"downstream_batchnorms": float(len(after))}
        details = ""
        if first in ratio:
            measured["train_test_variance_ratio"] = ratio[first]
            details += (
                f" Measured at '{first}': its input variance with dropout on is "
                f"{ratio[first]:.2f}x the variance with dropout off."
            )
        if first in shift:
            measured["running_variance_shift"] = shift[first]
            details += f" Its running variance is off by {shift[first]:.2f}x at inference."
        more = f" (and {len(after) - 1} more)" if len(after) > 1 else ""
        findings.append(Finding(
            "warning", "dropout-before-batchnorm", where,
            f"dropout {how} BatchNorm '{first}'{more}: BN learns the variance of noisy "
            f"activations but sees noise-free ones at inference (variance shift, Li et al. "
            f"2019).{details}{note}",
            "move dropout after the last BatchNorm (e.g. only before the classifier), or "
            "call dropkit.recalibrate_batchnorm(model, train_loader) after training.",
            measured,
        ))
    return findings


def _no_dropout_variances(
    model: nn.Module, args: tuple, dropouts: dict[str, nn.Module]
) -> dict[str, Tensor]:
    # Same training-mode pass as the probe (BN uses batch statistics) with only the
    # dropout layers off, so the ratio isolates what dropout does to BN's input.
    model.train()
    for module in dropouts.values():
        module.eval()
    return _bn_input_variances(model, args, _batchnorms(model))


def _eval_mode_findings(dropouts: dict[str, nn.Module], model: nn.Module) -> list[Finding]:
    if model.training:
        return []
    return [
        Finding(
            "warning", "dropout-active-in-eval", display_name(name),
            "the model is in eval mode but this dropout layer is in training mode, "
            "so predictions are random.",
            "call model.eval() after any submodule.train(); if this is deliberate "
            "MC dropout, use dropkit's MC tools and ignore this.",
        )
        for name, module in dropouts.items()
        if module.training and float(module.p) > 0.0
    ]


def _eval_randomness_findings(model: nn.Module, args: tuple) -> list[Finding]:
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        first = _run(model, args)
        torch.manual_seed(1)
        second = _run(model, args)
    if _same_outputs(first, second):
        return []
    return [Finding(
        "error", "random-in-eval", "<root>",
        "two eval-mode passes on the same input give different outputs: something "
        "random ignores model.eval(), typically a functional F.dropout(x, p) call "
        "without training=self.training.",
        "pass training=self.training to functional dropout calls, or use a dropout module.",
    )]


def _drop_path_findings(paths: list[str], probe: Optional[_Probe]) -> list[Finding]:
    if not paths:
        return []
    if probe is None:
        return [Finding(
            "info", "drop-path-unverified", display_name(paths[0]),
            f"{len(paths)} DropPath layer(s) found; whether each sits on a residual branch "
            "can only be checked by running the model.",
            "pass example_input to check() to verify DropPath placement.",
        )]
    findings = []
    for name in paths:
        consumers = probe.drop_path_consumers.get(name)
        if consumers is None:
            continue  # not run, or no gradient flows through it: nothing to tell
        if not any(c.startswith(("AddBackward", "SubBackward")) for c in consumers):
            used_by = ", ".join(sorted(set(consumers))) or "nothing (it is the model's output)"
            findings.append(Finding(
                "warning", "drop-path-not-residual", display_name(name),
                "DropPath zeroes whole samples, but its output is not added to a skip "
                f"connection (it feeds {used_by}), so dropped samples lose all their features.",
                "put DropPath on the residual branch: x = x + drop_path(block(x)); use "
                "Dropout for a plain path.",
            ))
    return findings


def check(model: nn.Module, example_input: Optional[ExampleInput] = None) -> list[Finding]:
    """Look for dropout misuse in ``model``; each finding says how to fix it.

    Checks:

    * ``dropout-before-batchnorm``: dropout upstream of a BatchNorm layer (Li et al.,
      2019). With ``example_input`` the order is the order of execution and the
      shift is measured: ``train_test_variance_ratio`` (BN's input variance with
      dropout on / off, BN in training mode) and ``running_variance_shift`` (see
      :func:`variance_shift`; only for BN layers that have been trained).
    * ``dropout-active-in-eval``: the model is in eval mode but a dropout layer is
      not; ``random-in-eval``: eval outputs differ between runs (needs ``example_input``).
    * ``inplace-overwrites-saved-tensor``: in-place dropout after an op whose backward
      reads its output (ReLU, sigmoid, tanh, softmax...). With ``example_input``
      found exactly with saved-tensor hooks, otherwise from Sequential order.
    * ``rate-out-of-range``: ``p`` outside 0.1-0.5 (error for 1.0).
    * ``drop-path-not-residual``: DropPath/StochasticDepth whose output is not added
      to a skip connection (needs ``example_input``; found in the autograd graph).

    Args:
        model: the model; its parameters, buffers, training flags and the global
            RNG state are the same after the call.
        example_input: a representative batch (at least 2 samples for BatchNorm;
            dozens give stable variances), or a tuple of ``forward`` arguments.

    Returns:
        Findings sorted by severity (errors first); empty when nothing was found.

    Example::

        >>> for finding in dropkit.check(model, x_batch):
        ...     print(finding)
        [warning] dropout-before-batchnorm at features.2: dropout runs before ...
    """
    model = validate_model(model, "check")
    # The rate checks need one rate per layer; Zoneout's two rates are not judged here.
    dropouts = {name: m for name, m in dropout_layers(model) if rate(m) is not None}
    # DropPath is checked whoever wrote it: dropkit's, timm's, torchvision's StochasticDepth.
    paths = [n for n, m in model.named_modules() if type(m).__name__ in _DROP_PATH_NAMES]
    findings = _rate_findings(dropouts) + _eval_mode_findings(dropouts, model)
    args = None if example_input is None else _example_args(example_input)
    if args is None:
        findings += _inplace_findings(model, dropouts, None)
        findings += _batchnorm_findings(model, None, dropouts, None, {})
        findings += _drop_path_findings(paths, None)
    else:
        # Before any probe: the probes run BN in training mode, which moves (and,
        # until restored, spoils) the running statistics this measures.
        shift = variance_shift(model, args)
        with _preserved(model, args):
            probe = _probe(model, args, dropouts, paths)
            findings += _inplace_findings(model, dropouts, probe)
            findings += _batchnorm_findings(model, args, dropouts, probe, shift)
            findings += _drop_path_findings(paths, probe)
            findings += _eval_randomness_findings(model, args)
    return sorted(findings, key=lambda f: _SEVERITY_ORDER[f.severity])
