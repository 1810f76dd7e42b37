"""CPU seconds of one training epoch of each file-backed lab task at its defaults.

CPU time (``time.process_time``, one torch thread) rather than wall time, because on a
shared machine the wall clock mostly measures the other jobs. Each epoch is split into
its two parts: optimisation (the minibatch loop of ``dropkit.lab.train.train_run``) and
the per-epoch evaluation (``evaluate`` over the train and the test split, in eval
mode). ``--max-batches N`` times only the first N minibatches (and the same share of
the evaluation) and extrapolates linearly to the whole epoch; the output says so.

    python benchmarks/bench_lab_epochs.py --data-dir ../shared/data
    python benchmarks/bench_lab_epochs.py --tasks ptb --max-batches 40
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch
from torch import nn

from dropkit.lab.tasks import get_task
from dropkit.lab.train import evaluate

DEFAULT_TASKS = ("mnist-mlp", "mnist-cnn", "fashion-mnist-mlp", "fashion-mnist-cnn", "fsdd",
                 "ptb", "shakespeare")


def epoch_cpu(name: str, data_dir: Path, p: float, max_batches: int | None) -> dict:
    task = get_task(name)
    data = task.load(data_dir)
    batch_size = task.defaults["batch_size"]
    torch.manual_seed(0)
    model = task.build_model(p, "standard")
    optimizer = torch.optim.Adam(model.parameters(), lr=task.defaults["lr"])
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    batches = order.split(batch_size)
    timed = batches if max_batches is None else batches[:max_batches]
    model.train()
    start = time.process_time()
    for batch in timed:  # the loop of train_run, verbatim in effect
        loss = task.loss(model(data.x_train[batch]), data.y_train[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if task.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
        optimizer.step()
    fit = time.process_time() - start
    share = len(timed) / len(batches)
    n_train = max(1, round(len(data.x_train) * share))
    n_test = max(1, round(len(data.x_test) * share))
    start = time.process_time()
    evaluate(model, task, data.x_train[:n_train], data.y_train[:n_train], data.y_scale)
    evaluate(model, task, data.x_test[:n_test], data.y_test[:n_test], data.y_scale)
    ev = time.process_time() - start
    return {"task": name, "p": p, "batches": len(batches), "timed": len(timed),
            "fit": fit / share, "eval": ev / share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--rates", default="0,0.5")
    parser.add_argument("--max-batches", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
          f"{torch.__version__}, 1 thread, load average {os.getloadavg()}")
    for name in args.tasks.split(","):
        for p in (float(r) for r in args.rates.split(",")):
            row = epoch_cpu(name, args.data_dir, p, args.max_batches)
            how = ("whole epoch" if row["timed"] == row["batches"] else
                   f"first {row['timed']} of {row['batches']} batches, extrapolated")
            print(f"{name:18s} p={p:<4g} optimisation {row['fit']:7.1f} s CPU, evaluation "
                  f"{row['eval']:7.1f} s CPU, per epoch ({how})", flush=True)
    print(f"# load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
