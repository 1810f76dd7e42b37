"""Monte Carlo dropout: predictive uncertainty from any PyTorch model with dropout.

Gal & Ghahramani (2016), "Dropout as a Bayesian approximation: representing
model uncertainty in deep learning" (ICML): keep dropout sampling at test time,
average ``T`` stochastic passes, and read the spread of the passes as model
uncertainty. Everything else (BatchNorm above all) stays in eval mode.

* :func:`mc_mode`: context manager that makes only the stochastic layers sample.
* :func:`predict`: ``T`` samples and the usual summaries (:class:`MCResult`).
  Fast path: the model is split with ``torch.fx`` before its first stochastic
  node; the deterministic prefix runs once, its activations are repeated ``T``
  times along the batch and the suffix runs batched. A CNN whose dropout sits
  in the classifier head pays for its convolutions once instead of ``T`` times.
  Models that cannot be traced fall back to a plain loop (one-line warning).
* :func:`weight_scaling_vs_mc`: test error of MC averaging against the
  deterministic weight-scaling rule as ``T`` grows (Srivastava et al., 2014, Fig. 11).

"Stochastic layers" are ``torch.nn`` dropout modules (dropkit's standard
modules subclass them), every module of ``dropkit.nn``, and any module whose
class sets ``dropkit_stochastic = True``. Calls of ``torch.nn.functional``
dropout functions inside ``forward`` are found when the model traces with
``torch.fx`` (they become sampling modules in the traced copy).

Seeding. With ``seed=None`` one seed is drawn from torch's default generator
(so ``torch.manual_seed`` reproduces a run) and used as below. With a seed, the
dropout of every *known* layer kind
(element-wise, channel-wise and alpha dropout) is replaced during prediction by
a Philox mask (dropkit's RNG contract): the ``k``-th dropout call of a pass in
sample ``t`` on input row ``r`` uses stream ``(fold_seed(seed, t), k << 48 | r)``,
so masks do not depend on how the work is batched and the fast path equals the
loop exactly. ``consistent=True`` uses offset ``k << 48`` for every row: one
mask per sample, shared by all inputs.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dropkit import kernels
from dropkit._layers import is_dropout_layer
from dropkit.functional import apply_alpha_mask
from dropkit.random import draw_seed, keep_scale, philox4x32, validate_seed

__all__ = [
    "MCFallbackWarning",
    "NoStochasticLayerWarning",
    "MCResult",
    "WeightScalingComparison",
    "is_stochastic",
    "stochastic_modules",
    "mc_mode",
    "predict",
    "weight_scaling_vs_mc",
]

Task = Literal["classification", "regression"]

_MASK32 = 0xFFFFFFFF
# The counter words fold_seed uses, so _sample_seeds(seed, T)[t] == fold_seed(seed, t).
_FOLD_TAG = (0x6B657973, 0x666F6C64)
_CALL_SHIFT = 48
_DEFAULT_MAX_ROWS = 65536
# Without a batch_size, the repeated activations of one suffix pass are kept near this
# size: suffix passes over cache-sized inputs ran 1.5x faster than one over all T
# samples at once (2026-11-25, bench_mc.py's CNN, 320 MB of repeated activations).
_DEFAULT_PASS_BYTES = 8 << 20

_FUNCTIONAL_DROPOUT: dict[Callable, type[nn.Module]] = {
    F.dropout: nn.Dropout,
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
    F.feature_alpha_dropout: nn.FeatureAlphaDropout,
    torch.dropout: nn.Dropout,
}


class MCFallbackWarning(UserWarning):
    """The fast path could not be used; predictions ran as a plain loop of passes."""


class NoStochasticLayerWarning(UserWarning):
    """The model has no stochastic layer: every MC sample would be the same."""


def is_stochastic(module: nn.Module) -> bool:
    """Whether ``module`` samples under MC dropout (see the module docstring).

    The one dropout-layer predicate of dropkit (:func:`dropkit._layers.is_dropout_layer`),
    shared with ``convert``, ``schedule``, ``check`` and the lab.
    """
    return is_dropout_layer(module)


def stochastic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every stochastic layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if is_stochastic(m)]


@contextlib.contextmanager
def mc_mode(model: nn.Module, *, warn: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode except its stochastic layers, which sample.

    BatchNorm, and every other layer that behaves differently in training, stays
    in eval mode. Every module's ``training`` flag is restored on exit, also when
    the body raises.

    Example::

        >>> with mc_mode(model):
        ...     samples = torch.stack([model(x) for _ in range(20)])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mc_mode expects an nn.Module, but got {type(model).__name__}")
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        found = stochastic_modules(model)
        for _, module in found:
            module.train()
        if warn and not found:
            warnings.warn(
                f"{type(model).__name__} has no stochastic layer (no dropout module): "
                "MC samples would all be equal",
                NoStochasticLayerWarning,
                stacklevel=3,
            )
        yield model
    finally:
        for module, training in saved:
            module.training = training


# --- seeded masks ---------------------------------------------------------------------


def _split64(values: Tensor) -> tuple[Tensor, Tensor]:
    return values & _MASK32, (values >> 32) & _MASK32


def _sample_seeds(seed: int, first: int, count: int) -> list[int]:
    """``[fold_seed(seed, t) for t in range(first, first + count)]``, in one Philox call."""
    t = torch.arange(first, first + count, dtype=torch.int64)
    lo, hi = _split64(t)
    counter = torch.stack(
        (lo, hi, torch.full_like(t, _FOLD_TAG[0]), torch.full_like(t, _FOLD_TAG[1])), -1
    )
    key = torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)
    words = philox4x32(counter, key).tolist()
    return [w[0] | (w[1] << 32) for w in words]


def _keep(
    seeds: Sequence[int], offsets: Sequence[int], numel: int, threshold: int, device
) -> Tensor:
    """Boolean keep masks ``(len(seeds), len(offsets), numel)``: stream ``(seed, offset)`` each."""
    ones = torch.ones(len(seeds), len(offsets), numel, device=device)
    return kernels.mask_scale_streams(ones, seeds, offsets, threshold, 1.0) != 0


@dataclass(frozen=True)
class _Site:
    """How a known dropout layer samples: which axes share a mask value, and the rule."""

    p: float
    rule: Literal["inverted", "classic", "alpha"]
    shared: Literal["none", "channels_first", "channels_last"]


def _site(module: nn.Module) -> Optional[_Site]:
    from dropkit.nn.standard import SpatialDropout

    if isinstance(module, SpatialDropout):
        shared = "channels_last" if module.channels_last else "channels_first"
        return _Site(float(module.p), "inverted", shared)
    if isinstance(module, nn.FeatureAlphaDropout):
        return _Site(float(module.p), "alpha", "channels_first")
    if isinstance(module, nn.AlphaDropout):
        return _Site(float(module.p), "alpha", "none")
    if isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return _Site(float(module.p), "inverted", "channels_first")
    if type(module) is nn.Dropout or (
        isinstance(module, nn.Dropout) and type(module).__module__ == "dropkit.nn.standard"
    ):
        rule = "classic" if getattr(module, "mode", "inverted") == "classic" else "inverted"
        return _Site(float(module.p), rule, "none")
    return None


class _SeededMasks:
    """Forward hooks that replace known dropout layers' output by Philox-masked input.

    The layers are in eval mode (their own output is the identity or a cheap
    scaling); the hook recomputes the sampled output from the input, with the
    masks of the current ``seeds`` (one per sample in the pass) and ``rows``.
    """

    def __init__(self, consistent: bool) -> None:
        self.consistent = consistent
        self.seeds: list[int] = []
        self.first_row = 0
        self.calls = 0
        self._handles: list[Any] = []

    def attach(self, modules: Iterable[nn.Module]) -> None:
        for module in modules:
            site = _site(module)
            if site is not None:
                self._handles.append(module.register_forward_hook(self._hook(site)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_pass(self, seeds: list[int], first_row: int) -> None:
        self.seeds, self.first_row, self.calls = seeds, first_row, 0

    def _hook(self, site: _Site):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            call = self.calls
            self.calls += 1
            return self._sample(args[0], site, call)

        return hook

    def _sample(self, x: Tensor, site: _Site, call: int) -> Tensor:
        samples = len(self.seeds)
        rows = x.shape[0] // samples
        feature_shape = list(x.shape[1:])
        if site.shared == "channels_first" and x.dim() >= 3:
            feature_shape = [feature_shape[0]] + [1] * (len(feature_shape) - 1)
        elif site.shared == "channels_last" and x.dim() >= 3:
            feature_shape = [1] * (len(feature_shape) - 1) + [feature_shape[-1]]
        numel = math.prod(feature_shape)
        base = call << _CALL_SHIFT
        if self.consistent:
            offsets = [base]
        else:
            offsets = [base | (self.first_row + r) for r in range(rows)]
        threshold, keep_prob, scale = keep_scale(site.p)
        if site.rule == "classic":
            scale = 1.0
        values = x.view(samples, rows, *x.shape[1:])
        if site.rule != "alpha" and not self.consistent and site.shared == "none":
            # One mask value per element and one stream per (sample, row): a
            # single kernel call masks and scales the whole batch in one pass.
            out = kernels.mask_scale_streams(values, self.seeds, offsets, threshold, scale)
            return out.view(x.shape)
        if site.rule == "alpha" and threshold == 0:
            return torch.zeros_like(x)
        keep = _keep(self.seeds, offsets, numel, threshold, x.device)
        keep = keep.view(samples, len(offsets), *feature_shape)
        if site.rule == "alpha":
            return apply_alpha_mask(values, keep, keep_prob).reshape(x.shape)
        return (values * keep.to(x.dtype) * scale).reshape(x.shape)


# --- the fx split ----------------------------------------------------------------------


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_stochastic(module) or super().is_leaf_module(module, qualified_name)


@dataclass
class _Traced:
    module: fx.GraphModule
    prefix: Optional[fx.GraphModule]
    suffix: Optional[fx.GraphModule]
    batched_live: list[bool]
    suffix_batchable: bool
    reason: str


def _functional_p(node: fx.Node) -> Optional[float]:
    p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
    return float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else None


def _trace(model: nn.Module) -> tuple[Optional[fx.GraphModule], str]:
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "use the loop"
        return None, f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: " + (
            str(error).splitlines()[0] if str(error) else "no message"
        ) + ")"
    module = fx.GraphModule(model, graph)
    converted = 0
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target not in _FUNCTIONAL_DROPOUT:
            continue
        p = _functional_p(node)
        if p is None:
            return None, f"a functional dropout call ({node.name}) has a non-constant p"
        name = f"_mc_functional_dropout_{converted}"
        converted += 1
        module.add_submodule(name, _FUNCTIONAL_DROPOUT[node.target](p))
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
    module.recompile()
    return module, ""


def _split(module: fx.GraphModule) -> _Traced:
    nodes = list(module.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return _Traced(module, None, None, [], False, "forward takes more than one input")
    stochastic = {
        n for n in nodes if n.op == "call_module" and is_stochastic(module.get_submodule(n.target))
    }
    dependent: set[fx.Node] = set()
    batched: set[fx.Node] = set()
    for node in nodes:
        if node in stochastic or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
        if node.op == "placeholder" or any(a in batched for a in node.all_input_nodes):
            batched.add(node)
    output = nodes[-1]
    if output not in dependent:
        return _Traced(module, None, None, [], False, "the output does not depend on dropout")
    prefix_nodes = [n for n in nodes if n not in dependent and n.op != "output"]
    live = [n for n in prefix_nodes if any(u in dependent for u in n.users)]

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in prefix_nodes:
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[n] for n in live))

    suffix_graph = fx.Graph()
    env = {n: suffix_graph.placeholder(f"live_{i}") for i, n in enumerate(live)}
    for node in nodes:
        if node in dependent:
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    suffix_modules = {module.get_submodule(n.target) for n in stochastic}
    batchable = all(_site(m) is not None for m in suffix_modules)
    return _Traced(
        module,
        fx.GraphModule(module, prefix_graph),
        fx.GraphModule(module, suffix_graph),
        [n in batched for n in live],
        batchable,
        "",
    )


# --- results ---------------------------------------------------------------------------


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)


@dataclass
class MCResult:
    """The ``T`` MC samples of a model's output and their summaries.

    ``samples`` has shape ``(T, N, *out)``: raw model outputs (logits for
    classification unless ``predict(..., logits=False)``). Classification
    summaries work on the class axis (last); regression ones per output element.
    """

    samples: Tensor
    task: Task
    tau: Optional[float] = None
    logits: bool = True

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    @property
    def probs(self) -> Tensor:
        """Per-sample class probabilities ``(T, N, C)`` (classification)."""
        self._need("classification", "probs")
        return self.samples.softmax(-1) if self.logits else self.samples

    @property
    def mean(self) -> Tensor:
        """Predictive mean: mean class probabilities, or the mean regression output."""
        if self.task == "classification":
            return self.probs.mean(0)
        return self.samples.mean(0)

    @property
    def variance(self) -> Tensor:
        """Variance over samples; for regression it includes the noise ``1 / tau``.

        Regression: ``Var_t[y_t] + 1/tau`` (Gal & Ghahramani, eq. 9, with the
        biased sample variance). Classification: per-class variance of the probabilities.
        """
        if self.task == "classification":
            return self.probs.var(0, unbiased=False)
        return self.samples.var(0, unbiased=False) + 1.0 / self.tau

    @property
    def epistemic_variance(self) -> Tensor:
        """Regression: the spread of the samples alone, ``Var_t[y_t]``."""
        self._need("regression", "epistemic_variance")
        return self.samples.var(0, unbiased=False)

    @property
    def predicted(self) -> Tensor:
        """Classification: argmax of the mean probabilities ``(N,)``."""
        self._need("classification", "predicted")
        return self.mean.argmax(-1)

    @property
    def predictive_entropy(self) -> Tensor:
        """``H[mean_t p_t]``: total uncertainty, in nats."""
        self._need("classification", "predictive_entropy")
        return _entropy(self.mean)

    @property
    def expected_entropy(self) -> Tensor:
        """``mean_t H[p_t]``: the aleatoric part, in nats."""
        self._need("classification", "expected_entropy")
        return _entropy(self.probs).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        """BALD (Houlsby et al., 2011): predictive minus expected entropy, clamped at 0.

        Non-negative by Jensen's inequality; the clamp removes rounding noise.
        """
        self._need("classification", "mutual_information")
        return (self.predictive_entropy - self.expected_entropy).clamp_min(0.0)

    def log_likelihood(self, target: Tensor) -> float:
        """Regression: MC test log-likelihood (mixture of ``N(y_t, 1/tau)``), mean over points."""
        self._need("regression", "log_likelihood")
        from dropkit.metrics import mc_log_likelihood

        return mc_log_likelihood(self.samples, target, self.tau)

    def _need(self, task: str, what: str) -> None:
        if self.task != task:
            raise ValueError(
                f"{what} is defined for task={task!r}, but this result is {self.task!r}"
            )


# --- predict ---------------------------------------------------------------------------


def _validate_samples(samples: int) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples (T) must be an int >= 1, but got {samples!r}")
    return samples


def _validate_predict_args(x: Any, task: str, tau: Optional[float], batch_size) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"predict expects a torch.Tensor input, but got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(
            f"predict expects a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}"
        )
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(
            f"input contains {int(torch.isnan(x).sum())} NaN value(s); MC predictions of NaN "
            "inputs are NaN"
        )
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', but got {task!r}")
    if task == "regression":
        if tau is None:
            raise ValueError(
                "task='regression' needs tau, the model precision (1 / observation noise "
                "variance) used in training; the predictive variance is Var[y_t] + 1/tau"
            )
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"tau must be a positive float, but got {tau!r}")
    elif tau is not None:
        raise ValueError(f"tau applies to task='regression' only, but got tau={tau!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an int >= 1 or None, but got {batch_size!r}")


def _check_output(out: Any, rows: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"predict needs a model that returns one Tensor, got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != rows:
        raise ValueError(
            f"the model returned shape {tuple(out.shape)}; predict needs outputs with the "
            f"batch ({rows} rows) first"
        )
    return out


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            end = "\n" if self.done >= self.total else ""
            print(f"\rMC dropout: {self.done}/{self.total} passes", end=end, file=sys.stderr)


@contextlib.contextmanager
def _rng_scope(x: Tensor):
    # Per-sample reseeding (below) must not leak into the caller's generator state.
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@dataclass(frozen=True)
class _SampleSeeds:
    """Per-sample seeds of one ``predict`` call, derived once up front.

    ``masks[t]`` keys sample ``t``'s Philox masks. ``torch[t]`` seeds torch's
    generator before sample ``t`` (before a pass starting at ``t``): layers that
    dropkit does not mask itself draw from it, and seeding it per sample keeps
    the loop and the fast path (which loops such suffixes) identical.
    """

    masks: list[int]
    torch: list[int]

    @classmethod
    def derive(cls, seed: int, samples: int) -> _SampleSeeds:
        return cls(
            _sample_seeds(seed, 0, samples),
            [s >> 1 for s in _sample_seeds(seed ^ 0x5EED, 0, samples)],
        )


def predict(
    model: nn.Module,
    x: Tensor,
    samples: int = 100,
    *,
    batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    consistent: bool = False,
    task: Task = "classification",
    tau: Optional[float] = None,
    logits: bool = True,
    fast: bool = True,
    progress: bool = False,
) -> MCResult:
    """Draw ``samples`` MC-dropout predictions of ``model`` on ``x``.

    Args:
        model: any ``nn.Module`` with dropout; it is left in the mode it came in.
        x: input batch ``(N, ...)``; the model must return one Tensor ``(N, ...)``.
        samples: the number of stochastic passes ``T`` (>= 1).
        batch_size: most rows (inputs x samples) per forward pass; bounds memory. Default:
            at most ``max(N, 65536)`` rows, and suffix passes sized to about 8 MiB of
            activations (cache-friendly).
        seed: Philox seed for reproducible masks (see the module docstring);
            ``None`` draws one from torch's generator (``torch.manual_seed`` reproduces it).
        consistent: one mask per sample shared by all inputs (active learning:
            compare inputs under the same sampled network). Implies a seed.
        task: ``"classification"`` (outputs are class logits, or probabilities
            with ``logits=False``) or ``"regression"`` (needs ``tau``).
        tau: model precision for regression: the predictive variance adds ``1/tau``.
        fast: use the torch.fx split when possible; ``False`` forces the loop.
        progress: print progress to stderr.

    Returns:
        :class:`MCResult` with ``samples`` of shape ``(T, N, ...)``.

    Example::

        >>> result = predict(model, x, samples=50, seed=0)
        >>> result.mean.shape, result.mutual_information.shape
        (torch.Size([N, C]), torch.Size([N]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"predict expects an nn.Module, but got {type(model).__name__}")
    samples = _validate_samples(samples)
    _validate_predict_args(x, task, tau, batch_size)
    # Checked where it enters, with the functional ops' message: -1, 2**64, 1.5 and
    # True are refused here instead of running silently or failing deep inside.
    seed = validate_seed(seed)
    if seed is None:
        # Unseeded calls draw one seed from torch's generator and then take the Philox
        # path: torch.manual_seed still reproduces them, and the native kernel draws the
        # T x rows masks several times faster than the layers' own dropout would.
        seed = draw_seed()

    traced, reason = _trace(model)
    runner: nn.Module = traced if traced is not None else model
    split = _split(traced) if traced is not None and fast else None
    if fast and traced is not None and split is not None and split.prefix is None:
        reason = split.reason
    use_split = split is not None and split.prefix is not None
    if fast and not use_split and reason and stochastic_modules(runner):
        warnings.warn(f"MC dropout fast path unavailable: {reason}; looping over samples",
                      MCFallbackWarning, stacklevel=2)

    sites = [m for _, m in stochastic_modules(runner)]
    if consistent and any(_site(m) is None for m in sites):
        unknown = sorted({type(m).__name__ for m in sites if _site(m) is None})
        warnings.warn(
            f"consistent=True: {', '.join(unknown)} draw their own masks, which are not "
            "shared across inputs", UserWarning, stacklevel=2,
        )

    rows_total = x.shape[0]
    max_rows = batch_size if batch_size is not None else max(rows_total, _DEFAULT_MAX_ROWS)
    chunk_rows = min(rows_total, max_rows)
    masks = _SeededMasks(consistent)
    sample_seeds = _SampleSeeds.derive(seed, samples)
    meter = _Progress(samples * -(-rows_total // chunk_rows), progress)
    outputs = []
    with _rng_scope(x), mc_mode(runner, warn=not sites):
        masks.attach(sites)
        for module in sites:
            if _site(module) is not None:
                module.eval()  # the hook samples; the layer itself must not
        try:
            with torch.no_grad():
                for start in range(0, rows_total, chunk_rows):
                    chunk = x[start : start + chunk_rows]
                    if use_split:
                        out = _run_split(
                            split, chunk, start, sample_seeds, max_rows, masks, meter,
                            cap_bytes=batch_size is None,
                        )
                    else:
                        out = _run_loop(runner, chunk, start, sample_seeds, masks, meter)
                    outputs.append(out)
        finally:
            masks.detach()
    return MCResult(torch.cat(outputs, 1), task, None if tau is None else float(tau), logits)


def _run_loop(runner, chunk, first_row, seeds: _SampleSeeds, masks, meter) -> Tensor:
    outs = []
    for t in range(len(seeds.masks)):
        masks.start_pass(seeds.masks[t : t + 1], first_row)
        torch.manual_seed(seeds.torch[t])
        outs.append(_check_output(runner(chunk), chunk.shape[0]))
        meter.advance(1)
    return torch.stack(outs)


def _run_split(
    split: _Traced, chunk, first_row, seeds: _SampleSeeds, max_rows, masks, meter,
    cap_bytes: bool,
) -> Tensor:
    samples = len(seeds.masks)
    rows = chunk.shape[0]
    live = split.prefix(chunk)
    for value, is_batched in zip(live, split.batched_live, strict=True):
        rows_first = isinstance(value, Tensor) and value.dim() and value.shape[0] == rows
        if is_batched and not rows_first:
            # A batch-dependent non-tensor (say x.size(0)) cannot be repeated safely.
            return _run_loop(split.module, chunk, first_row, seeds, masks, meter)
    per_pass = max(1, max_rows // rows) if split.suffix_batchable else 1
    if cap_bytes:
        sample_bytes = sum(
            v.numel() * v.element_size()
            for v, b in zip(live, split.batched_live, strict=True)
            if b and isinstance(v, Tensor)
        )
        per_pass = min(per_pass, max(1, _DEFAULT_PASS_BYTES // max(sample_bytes, 1)))
    outs = []
    for t0 in range(0, samples, per_pass):
        count = min(per_pass, samples - t0)
        masks.start_pass(seeds.masks[t0 : t0 + count], first_row)
        torch.manual_seed(seeds.torch[t0])
        inputs = [
            v.repeat(count, *([1] * (v.dim() - 1))) if b else v
            for v, b in zip(live, split.batched_live, strict=True)
        ]
        out = _check_output(split.suffix(*inputs), rows * count)
        outs.append(out.view(count, rows, *out.shape[1:]))
        meter.advance(count)
    return torch.cat(outs)


# --- weight scaling vs MC --------------------------------------------------------------


@dataclass(frozen=True)
class WeightScalingComparison:
    """Test error of MC averaging with ``T`` samples and of the weight-scaling network."""

    samples: tuple[int, ...]
    mc_error: tuple[float, ...]
    weight_scaling_error: float
    examples: int

    def __str__(self) -> str:
        pairs = zip(self.samples, self.mc_error, strict=True)
        cells = ", ".join(f"T={t}: {e:.4f}" for t, e in pairs)
        return f"weight scaling: {self.weight_scaling_error:.4f}; MC {cells} (n={self.examples})"


def weight_scaling_vs_mc(
    model: nn.Module,
    loader: Iterable,
    samples: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
    *,
    seed: Optional[int] = 0,
    batch_size: Optional[int] = None,
    logits: bool = True,
) -> WeightScalingComparison:
    """Classification error of MC model averaging as ``T`` grows vs. the weight-scaling rule.

    Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks
    from overfitting", Fig. 11: the deterministic eval-mode network approximates
    the average of the thinned networks; MC averaging matches it after ~50 samples.
    ``loader`` yields ``(x, y)`` batches. The largest ``T`` is drawn once; smaller
    ``T`` use its first samples.
    """
    counts = tuple(_validate_samples(t) for t in samples)
    if not counts:
        raise ValueError("samples must list at least one T")
    most = max(counts)
    wrong_mc = [0] * len(counts)
    wrong_ws = 0
    total = 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("loader must yield (inputs, labels) pairs")
        x, y = batch[0], torch.as_tensor(batch[1])
        result = predict(model, x, most, seed=seed, batch_size=batch_size, logits=logits)
        probs = result.probs
        y = y.to(probs.device)
        for i, t in enumerate(counts):
            wrong_mc[i] += int((probs[:t].mean(0).argmax(-1) != y).sum())
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                wrong_ws += int((model(x).argmax(-1) != y).sum())
        finally:
            model.train(was_training)
        total += y.numel()
        if seed is not None:
            seed = _sample_seeds(seed, 1 << 40, 1)[0]
    if total == 0:
        raise ValueError("loader yielded no examples")
    return WeightScalingComparison(
        counts, tuple(w / total for w in wrong_mc), wrong_ws / total, total
    )
