"""The training loop: one run = one task, one dropout variant, one rate, one seed.

Read it top to bottom like nanoGPT's train.py: build, (maybe) resume, then
per epoch train, evaluate, report. Persistence is the caller's business: it
receives each epoch's metrics and a checkpoint through ``on_epoch``.

Runs are paired by seed: the seed alone fixes the initial weights (drawn before
any dropout mask, and the same for every rate because a variant builds the same
layers at any ``p``) and the batch order (its own generator, untouched by the
masks), so a p=0 and a p>0 run with one seed differ only by dropout.

Model selection is on validation data: every epoch is scored on the task's
validation split, the epoch with the best validation metric is the run's
reported one (:func:`select_epoch`), and :func:`train_run` returns the weights
of that epoch. The test set chooses nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import time
from collections.abc import Callable
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dropkit.lab.config import RunConfig
from dropkit.lab.tasks import Task, TaskData

__all__ = ["evaluate", "select_epoch", "selection_key", "train_loop", "train_run"]


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
    epoch_cpu_time: Optional[float] = None,
) -> dict[str, float]:
    """The per-epoch record: mean optimisation loss, wall and CPU time, train/validation/test
    loss and metric, and the sizes of the validation and test sets (the report's resolution)."""
    device = x_train.device
    train_loss, train_metric = evaluate(model, task, x_train, y_train, data.y_scale)
    test_loss, test_metric = evaluate(
        model, task, data.x_test.to(device), data.y_test.to(device), data.y_scale
    )
    metrics = {
        "fit_loss": fit_loss,
        "train_loss": train_loss,
        "test_loss": test_loss,
        f"train_{task.metric}": train_metric,
        f"test_{task.metric}": test_metric,
        "test_examples": len(data.y_test),
        "epoch_time": epoch_time,
    }
    if data.x_val is not None:
        val_loss, val_metric = evaluate(
            model, task, data.x_val.to(device), data.y_val.to(device), data.y_scale
        )
        metrics.update(
            {"val_loss": val_loss, f"val_{task.metric}": val_metric,
             "val_examples": len(data.y_val)}
        )
    if epoch_cpu_time is not None:
        metrics["epoch_cpu_time"] = epoch_cpu_time
    return metrics


def selection_key(task: Task, metrics: dict) -> Optional[tuple[float, float]]:
    """Smaller is better: the validation metric, then validation loss to break its ties
    (accuracy on a few hundred examples ties often); ``None`` without a validation split."""
    value = metrics.get(f"val_{task.metric}")
    # A diverged epoch (NaN) is never the best one; comparisons with NaN would make it so.
    if value is None or not math.isfinite(value) or not math.isfinite(metrics["val_loss"]):
        return None
    return (-value if task.higher_is_better else value, metrics["val_loss"])


def select_epoch(task: Task, rows: list[dict]) -> tuple[dict, bool]:
    """The reported epoch of a run's rows and whether validation chose it.

    The earliest epoch with the best :func:`selection_key`; the last epoch when the
    rows have no validation metric (runs recorded before the lab held one out).
    """
    scored = [(selection_key(task, row), i) for i, row in enumerate(rows)]
    scored = [(key, i) for key, i in scored if key is not None]
    if not scored:
        return rows[-1], False
    return rows[min(scored)[1]], True


def check_data_for_run(task: Task, data: TaskData, seed: int) -> None:
    """Refuse data loaded for another seed on tasks whose folds are chosen by the seed."""
    if task.data_per_seed and data.seed != seed:
        raise RuntimeError(
            f"task {task.name!r} holds out different data per run seed: run seed={seed} needs "
            f"task.load(data_dir, seed={seed}), but got the data of seed={data.seed}"
        )


def _checkpoint(
    model: nn.Module, optimizer, shuffle: torch.Generator, epoch: int,
    best: Optional[dict] = None,
) -> bytes:
    # Both generators are saved: torch's global one draws the dropout seeds
    # (dropkit.random.draw_seed), ``shuffle`` orders the batches. Restoring them
    # makes a resumed run bit-identical to one that was never interrupted. ``best``
    # (the validation-selected epoch's key and weights) survives a resume the same way.
    buffer = io.BytesIO()
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
    }
    if best is not None:
        state["best"] = best
    torch.save(state, buffer)
    return buffer.getvalue()


def _restore(blob: bytes, model: nn.Module, optimizer, shuffle: torch.Generator) -> int:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    shuffle.set_state(state["shuffle_rng"])
    return int(state["epoch"])


def _best_of(blob: bytes) -> Optional[dict]:
    best = torch.load(io.BytesIO(blob), weights_only=True).get("best")
    if best is not None:
        best["key"] = tuple(best["key"])
    return best


def initial_model(task: Task, config: RunConfig) -> nn.Module:
    """The run's model before training: a function of ``config.seed`` (and variant) only.

    Seeded here, before anything else draws from torch's generator, so the runs of one
    seed start from the same weights whatever their rate (tests/lab/test_train.py).
    """
    torch.manual_seed(config.seed)
    return task.build_model(config.p, config.variant)


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
    1-based ``epoch``; metrics are train/validation/test loss and metric (all in
    eval mode, so train - test is the generalisation gap), the mean training
    minibatch loss, and the wall-clock and CPU seconds the epoch's optimisation took.

    Returns the model in eval mode with the weights of the epoch :func:`select_epoch`
    reports (best validation metric), or of the last epoch when there is no
    validation split.
    """
    return train_loop(task, data, config, checkpoint=checkpoint, on_epoch=on_epoch)[0]


#: The per-rank stream (``dropkit.distributed.RNGTracker``) a data-parallel step's
#: forward draws its dropout masks from.
DATA_PARALLEL_STREAM = "lab-data-parallel"


def train_loop(
    task: Task,
    data: TaskData,
    config: RunConfig,
    *,
    checkpoint: Optional[bytes] = None,
    on_epoch: Optional[EpochCallback] = None,
    ddp: bool = False,
    device: Optional[torch.device] = None,
) -> tuple[nn.Module, dict]:
    """The one training loop, single-process or (``ddp``) as one rank of a process group.

    Returns ``(model, facts)``: the model as :func:`train_run` describes it and, with
    ``ddp``, what rank 0 records about the parallel run (:mod:`dropkit.lab.ddp`):
    world size, backend, each rank's first-step stream seed and the largest
    parameter difference between replicas after any epoch; ``{}`` without it.
    With ``ddp`` only rank 0 scores epochs and calls ``on_epoch``.
    """
    check_data_for_run(task, data, config.seed)
    device = torch.device("cpu") if device is None else device
    # Seeded by the run seed alone: with ddp the same on every rank, and the weights a
    # single-process run of this config starts from.
    model = initial_model(task, config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    first_epoch, best = 1, None
    if checkpoint is not None:
        first_epoch = _restore(checkpoint, model, optimizer, shuffle) + 1
        best = _best_of(checkpoint)

    rank, world, forward, fork = 0, 1, model, contextlib.nullcontext
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        from dropkit.distributed import RNGTracker

        rank, world = dist.get_rank(), dist.get_world_size()
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        tracker = RNGTracker()
        tracker.add_per_rank(DATA_PARALLEL_STREAM)
        fork = functools.partial(tracker.fork, DATA_PARALLEL_STREAM)
    first_seed: Optional[int] = None
    replica_diff = 0.0

    x, y = data.x_train.to(device), data.y_train.to(device)
    for epoch in range(first_epoch, config.epochs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        forward.train()
        # Summed on the device in float64: no host sync per step (a GPU's queue stays
        # full), and the same sums as Python floats would give.
        fit_loss = torch.zeros((), dtype=torch.float64, device=device)
        batches = 0
        for batch in torch.randperm(len(x), generator=shuffle).split(config.batch_size):
            # The global minibatch is a single process's; rank r trains on slice r of
            # it. A minibatch smaller than the world is skipped by every rank alike.
            if len(batch) < world:
                continue
            shard = batch.tensor_split(world)[rank].to(device) if ddp else batch
            with fork():
                if ddp and first_seed is None:
                    # fork re-seeded the generator: its seed keys every mask of this step.
                    first_seed = torch.initial_seed()
                loss = task.loss(forward(x[shard]), y[shard])
            optimizer.zero_grad(set_to_none=True)
            weight = len(shard) / len(batch)
            # DDP averages gradients over ranks: scaled so, the average is the gradient
            # of the whole minibatch's mean loss even when the slices differ in size.
            (loss * (world * weight) if ddp else loss).backward()
            if task.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
            optimizer.step()
            fit_loss += loss.detach().double() * weight
            batches += 1
        if ddp:
            dist.all_reduce(fit_loss)
        fit_value = fit_loss.item() / max(batches, 1)  # waits for the device: then time
        # CPU time is what the run itself consumed; wall time also counts waiting for a
        # core that other jobs hold, so only CPU time can say whether dropout is slower.
        epoch_time = time.perf_counter() - start
        epoch_cpu_time = time.process_time() - cpu_start  # with ddp: this rank's
        if ddp:
            replica_diff = max(replica_diff, _replica_difference(model))
        if rank != 0:
            continue
        metrics = epoch_metrics(
            model, task, data, x, y, fit_value, epoch_time, epoch_cpu_time
        )
        key = selection_key(task, metrics)
        # Strictly better only: ties keep the earlier epoch, as select_epoch does.
        if key is not None and (best is None or key < best["key"]):
            best = {"epoch": epoch, "key": key,
                    "model": {name: value.detach().cpu().clone() if isinstance(value, Tensor)
                              else copy.deepcopy(value)
                              for name, value in model.state_dict().items()}}
        if on_epoch is not None:
            on_epoch(epoch, metrics, _checkpoint(model, optimizer, shuffle, epoch, best))
    facts: dict = {}
    if ddp:
        seeds: list = [None] * world
        dist.all_gather_object(seeds, first_seed)
        facts = {"world_size": world, "backend": dist.get_backend(),
                 "first_step_stream_seeds": seeds, "replica_max_abs_diff": replica_diff}
    # Only rank 0 scores epochs; the other ranks' replicas are discarded.
    if rank == 0 and best is not None:
        model.load_state_dict(best["model"])
    return model.eval(), facts


def _replica_difference(model: nn.Module) -> float:
    """Largest absolute difference of any parameter between any two ranks' replicas."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return (high - low).abs().max().item()
