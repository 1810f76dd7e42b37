"""Wall time of one MNIST epoch in the lab (MLP and CNN tasks, with and without dropout).

Run: ``.venv/bin/python benchmarks/bench_lab_mnist.py [--data-dir ../shared/data]``.
Uses whatever split the reader gives (here the documented 80/20 split of the 10k test
images, 7997 training images, when the 60k training images are absent) and one torch
thread, the lab's default. Prints, per task and rate, the median over ``--repeats`` of
the optimisation seconds of one epoch and of the whole epoch including the lab's
eval-mode pass over train and test; ratios to p=0 come from the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dropkit.lab.config import RunConfig
from dropkit.lab.tasks import get_task
from dropkit.lab.train import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, 1 thread")
    for name in ("mnist-mlp", "mnist-cnn"):
        task = get_task(name)
        data = task.load(args.data_dir)
        print(f"{name}: {len(data.y_train)} train / {len(data.y_test)} test images; "
              f"{data.notes[0]}")
        base = None
        for p in (0.0, 0.5):
            optimise, whole = [], []
            for repeat in range(args.repeats):
                config = RunConfig(name, "standard", p, repeat, 1, task.defaults["batch_size"],
                                   task.defaults["lr"], 0.0)
                seen: list[dict] = []
                start = time.perf_counter()
                train_run(task, data, config, on_epoch=lambda e, m, c, s=seen: s.append(m))
                whole.append(time.perf_counter() - start)
                optimise.append(seen[0]["epoch_time"])
            median = statistics.median(optimise)
            base = base or median
            print(f"  p={p:g}: epoch {median:.2f} s optimisation (x{median / base:.2f} of p=0), "
                  f"{statistics.median(whole):.2f} s with evaluation")


if __name__ == "__main__":
    main()
