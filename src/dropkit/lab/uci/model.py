"""The benchmark's net as a stacked ensemble: hand-written gradients, Philox masks, flat Adam.

Every (rate, tau) of a split's grid is one net of the ensemble; one batched
matmul per layer serves all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dropkit import kernels
from dropkit.lab.uci.loader import UCIDataset
from dropkit.lab.uci.protocol import UCIProtocol
from dropkit.random import keep_threshold


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


