"""``dropkit lab run ... --ddp N``: the experiment grid, each run trained data-parallel.

Two ways to start the ranks:

* ``dropkit lab run TASK --ddp N`` spawns N local processes
  (:func:`torch.multiprocessing.start_processes`, rendezvous on a free
  loopback port);
* ``torchrun --nproc_per_node N [--nnodes ...] -m dropkit lab run TASK`` starts
  them itself; the command sees ``WORLD_SIZE``/``RANK`` and joins
  (``--ddp`` is optional there and, if given, has to equal ``WORLD_SIZE``).

Backend: NCCL when every rank has a GPU of its own, else gloo on the CPU.

What each step does, and why the result is sound:

* The global minibatch is the same as in a single-process run (one shared
  shuffle permutation); rank r trains on its ``r``-th slice, and its loss is
  scaled by ``N * len(slice) / len(batch)``, so DDP's gradient average is the
  gradient of the whole minibatch's mean loss even when slices differ in size.
  A last minibatch smaller than N is skipped on every rank alike.
* The forward runs inside ``RNGTracker.fork`` of a per-rank stream
  (:mod:`dropkit.distributed`): dropout masks differ across ranks, yet each is
  a pure function of the run seed and the rank, so a rerun reproduces them.
* DDP all-reduces gradients, so replicas stay identical; after every epoch the
  ranks compare parameters (all-reduce of max and min) and the largest
  difference is recorded with the run (``ddp.replica_max_abs_diff``).
* Only rank 0 touches the run store (claims, epochs, checkpoints,
  measurements); every rank drives the same
  :func:`dropkit.lab.pipeline.run_grid`, and rank 0 broadcasts what the store
  decided (the plan, each run's claim and resume checkpoint) to the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from dropkit.distributed import exit_rank
from dropkit.lab.config import ConfigError, ExperimentConfig, RunConfig
from dropkit.lab.pipeline import GridResult, plan, run_grid
from dropkit.lab.store import open_store
from dropkit.lab.tasks import Task, TaskData, get_task
from dropkit.lab.train import train_loop

__all__ = ["exit_rank", "launched_by_torchrun", "run_experiment_ddp", "torchrun_rank",
           "trained_data_parallel"]


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` (or compatible) launch."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_rank() -> int:
    return int(os.environ["RANK"])


def _world_from_env(ddp: Optional[int]) -> int:
    world = int(os.environ["WORLD_SIZE"])
    if ddp is not None and ddp != world:
        raise ConfigError(
            f"--ddp {ddp} disagrees with torchrun's WORLD_SIZE={world}; drop --ddp or make "
            "them equal"
        )
    return world


def _check_world(world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"--ddp has to be an integer >= 1 (processes), but got {world_size!r}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _device(backend: str) -> torch.device:
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def train_run_ddp(
    task: Task,
    data: TaskData,
    config: RunConfig,
    *,
    device: torch.device,
    checkpoint: Optional[bytes] = None,
    on_epoch=None,
) -> tuple[nn.Module, dict]:
    """:func:`dropkit.lab.train.train_run` on this rank's slice of every minibatch.

    The same loop (:func:`dropkit.lab.train.train_loop`) with its data-parallel
    branches taken. Returns the trained module (unwrapped, eval mode) with the
    weights of the epoch with the best validation metric, and the DDP facts rank 0
    records: world size, backend, first step's stream seed per rank, the largest
    parameter difference between replicas seen after any epoch.
    """
    return train_loop(task, data, config, checkpoint=checkpoint, on_epoch=on_epoch, ddp=True,
                      device=device)


def _broadcast(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _rank_main(store_path: Optional[Path], config: ExperimentConfig, world: int,
               result_path: Optional[str], data: Optional[TaskData] = None
               ) -> Optional[GridResult]:
    """One rank's pass over the grid; rank 0 alone reads and writes the store.

    Every rank loads the data itself (per run seed where the task needs it), unless
    ``data`` was loaded already in this process.
    """
    rank = dist.get_rank()
    device = _device(dist.get_backend())
    task = get_task(config.task)
    torch.set_num_threads(config.threads)
    store = open_store(store_path) if rank == 0 else None
    try:
        result = run_grid(
            store, config, task, ddp=world, data=data, share=_broadcast,
            train=lambda task, data, run, **kw: train_run_ddp(task, data, run, device=device,
                                                               **kw),
            extra=lambda facts: {"ddp": facts},
        )
        dist.barrier()
        if rank == 0 and result_path is not None:
            Path(result_path).write_text(json.dumps(dataclasses.asdict(result)))
        return result if rank == 0 else None
    finally:
        if store is not None:
            store.close()


_TRAINED = False


def trained_data_parallel() -> bool:
    """Whether this process took part in data-parallel training (see :func:`exit_rank`)."""
    return _TRAINED


def _quiesce() -> None:
    """Wait for every rank before tearing the process group down.

    Without it rank 1 could destroy its gloo pairs while rank 0 was still
    writing results; a spawned rank once died that way in a CI run, with
    SIGABRT ("terminate called without an active exception") from gloo's
    teardown. Only on the success path: after an error the other ranks may
    never arrive.
    """
    dist.barrier()


def _spawned(rank: int, port: int, world: int, store_path: str, config: ExperimentConfig,
             result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else (
        "gloo")
    if backend == "nccl":
        os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        _rank_main(Path(store_path), config, world, result_path)
        _quiesce()
    finally:
        dist.destroy_process_group()
    exit_rank(0)  # the result file is written; see exit_rank for why not return


def run_experiment_ddp(store_path: Path, config: ExperimentConfig,
                       world_size: Optional[int], *, data: Optional[TaskData] = None
                       ) -> Optional[GridResult]:
    """Train ``config``'s grid data-parallel; returns the result on rank 0 (or the launcher).

    Under torchrun this process is one rank and ``world_size`` may be ``None``;
    otherwise ``world_size`` processes are spawned here and this call waits.
    Non-zero torchrun ranks return ``None``. ``data`` (already loaded, e.g. by the
    CLI's check) is used by this process's rank under torchrun; spawned ranks load
    their own rather than receive a pickled copy.
    """
    global _TRAINED
    if launched_by_torchrun():
        world = _world_from_env(world_size)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        _TRAINED = True
        try:
            result = _rank_main(store_path if torchrun_rank() == 0 else None, config, world,
                                None, data)
            _quiesce()
            return result
        finally:
            dist.destroy_process_group()
    _check_world(world_size)
    import torch.multiprocessing as mp

    # Check for conflicts here, where an error can still be a clean message, before
    # any rank starts (rank 0 plans again: the store may change in between).
    with open_store(store_path) as store:
        plan(store, config, ddp=world_size)

    with tempfile.TemporaryDirectory() as folder:
        result_path = os.path.join(folder, "result.json")
        mp.start_processes(
            _spawned, args=(_free_port(), world_size, str(store_path), config, result_path),
            nprocs=world_size, join=True, start_method="spawn",
        )
        return GridResult(**json.loads(Path(result_path).read_text()))
