"""The training loop: one run = one task, one dropout variant, one rate, one seed.

Read it top to bottom like nanoGPT's train.py: build, (maybe) resume, then
per epoch train, evaluate, report. Persistence is the caller's business: it
receives each epoch's metrics and a checkpoint through ``on_epoch``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from dropkit.lab.config import RunConfig
from dropkit.lab.tasks import Task, TaskData

__all__ = ["evaluate", "train_run"]


EpochCallback = Callable[[int, dict, bytes], None]


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, x: Tensor, y: Tensor, y_scale: float = 1.0,
    batch_size: Optional[int] = None,
) -> tuple[float, float]:
    """(mean loss, task metric) of ``model`` in eval mode over ``x``/``y``.

    Language models are scored per token: the token-weighted mean cross-entropy
    of all windows, turned into the task metric (perplexity, bits per char)
    by ``task.metric_from_loss``, so their vocabulary-sized outputs are never
    all held at once.
    """
    model.eval()
    batch_size = batch_size or task.eval_batch_size
    if task.kind == "language_model":
        total = 0.0
        for inputs, targets in zip(x.split(batch_size), y.split(batch_size), strict=True):
            total += task.loss(model(inputs), targets).item() * targets.numel()
        loss = total / y.numel()
        return loss, task.metric_from_loss(loss)
    outputs = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    return task.loss(outputs, y).item(), task.score(outputs, y, y_scale)


def epoch_metrics(
    model: nn.Module,
    task: Task,
    data: TaskData,
    x_train: Tensor,
    y_train: Tensor,
    fit_loss: float,
    epoch_time: float,
) -> dict[str, float]:
    """The per-epoch record: mean optimisation loss, time, and train/test loss and metric."""
    device = x_train.device
    train_loss, train_metric = evaluate(model, task, x_train, y_train, data.y_scale)
    test_loss, test_metric = evaluate(
        model, task, data.x_test.to(device), data.y_test.to(device), data.y_scale
    )
    return {
        "fit_loss": fit_loss,
        "train_loss": train_loss,
        "test_loss": test_loss,
        f"train_{task.metric}": train_metric,
        f"test_{task.metric}": test_metric,
        "epoch_time": epoch_time,
    }


def _checkpoint(model: nn.Module, optimizer, shuffle: torch.Generator, epoch: int) -> bytes:
    # Both generators are saved: torch's global one draws the dropout seeds
    # (dropkit.random.draw_seed), ``shuffle`` orders the batches. Restoring them
    # makes a resumed run bit-identical to one that was never interrupted.
    buffer = io.BytesIO()
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": shuffle.get_state(),
        },
        buffer,
    )
    return buffer.getvalue()


def _restore(blob: bytes, model: nn.Module, optimizer, shuffle: torch.Generator) -> int:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    shuffle.set_state(state["shuffle_rng"])
    return int(state["epoch"])


def train_run(
    task: Task,
    data: TaskData,
    config: RunConfig,
    *,
    checkpoint: Optional[bytes] = None,
    on_epoch: Optional[EpochCallback] = None,
) -> nn.Module:
    """Train ``task``'s model under ``config``; resume from ``checkpoint`` when given.

    ``on_epoch(epoch, metrics, checkpoint)`` is called after every epoch with
    1-based ``epoch``; metrics are train/test loss and metric (both in eval
    mode, so their difference is the generalisation gap), the mean training
    minibatch loss, and the seconds the epoch's optimisation took.
    """
    torch.manual_seed(config.seed)
    model = task.build_model(config.p, config.variant)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    first_epoch = 1
    if checkpoint is not None:
        first_epoch = _restore(checkpoint, model, optimizer, shuffle) + 1

    x, y = data.x_train, data.y_train
    for epoch in range(first_epoch, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        fit_loss, batches = 0.0, 0
        for batch in torch.randperm(len(x), generator=shuffle).split(config.batch_size):
            loss = task.loss(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if task.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
            optimizer.step()
            fit_loss, batches = fit_loss + loss.item(), batches + 1
        epoch_time = time.perf_counter() - start

        metrics = epoch_metrics(model, task, data, x, y, fit_loss / batches, epoch_time)
        if on_epoch is not None:
            on_epoch(epoch, metrics, _checkpoint(model, optimizer, shuffle, epoch))
    return model.eval()
