"""Wall time of the default lab demo (mnist1d, p in {0, 0.2, 0.5} x 2 seeds) and dropout's cost.

Run: ``.venv/bin/python benchmarks/bench_lab.py``. Prints the demo's wall time
(training + measurements, then the report) and, measured in the same run, the
median seconds per epoch with dropout over the same without (p=0).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dropkit.lab.config import build_config
from dropkit.lab.report.html import write_report
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store
from dropkit.lab.summary import summarise


def main() -> None:
    config = build_config("mnist1d", name="bench")
    with tempfile.TemporaryDirectory() as folder, open_store(Path(folder) / "lab.sqlite") as store:
        start = time.perf_counter()
        run_experiment(store, config, show_progress=False)
        trained = time.perf_counter() - start
        experiment = store.get_experiment("bench")
        write_report(store, experiment, Path(folder) / "report.html")
        total = time.perf_counter() - start
        summary = summarise(store, experiment)
    base = summary.baseline("standard").epoch_time.mean
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, threads {config.threads}")
    print(f"demo ({len(config.runs())} runs x {config.epochs} epochs): train+measure "
          f"{trained:.1f} s, with report {total:.1f} s")
    for group in summary.groups:
        print(f"  p={group.p:g}: median s/epoch {group.epoch_time.mean:.3f} "
              f"(x{group.epoch_time.mean / base:.2f} of p=0), test accuracy {group.test}")
    print(f"median ratio dropout/no-dropout epoch time: "
          f"{statistics.median(g.epoch_time.mean / base for g in summary.groups if g.p > 0):.2f}")


if __name__ == "__main__":
    main()
