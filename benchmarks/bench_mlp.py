"""Training-step overhead of dropout in an MLP 784-1024-1024-10, measured in one run.

Three copies of the same network (no dropout / ``torch.nn.Dropout(0.5)`` /
``dropkit.Dropout(0.5)`` after each hidden ReLU) take SGD steps on random
data; steps are interleaved model by model so machine noise hits all alike,
and the median step time per model is compared with the no-dropout one.
Batches 64, 256 and 1024; float32 and bfloat16 weights.

``--cpu-time`` runs torch (and dropkit) on one thread and times each step
with the calling thread's CPU time, which other processes on a shared machine
do not inflate: the compute overhead alone, without the scheduling noise that
2-thread wall times carry.

Run: ``python benchmarks/bench_mlp.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import torch
from _machine import loadavg
from torch import nn

import dropkit
from dropkit import kernels

BATCHES = (64, 256, 1024)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _mlp(dropout_factory) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(784, 1024), nn.ReLU()]
    layers += [dropout_factory()] if dropout_factory else []
    layers += [nn.Linear(1024, 1024), nn.ReLU()]
    layers += [dropout_factory()] if dropout_factory else []
    layers += [nn.Linear(1024, 10)]
    return nn.Sequential(*layers)


def _step_fn(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs).float(), targets).backward()
        optimizer.step()

    return step


def _measure(batch: int, dtype: torch.dtype, steps: int, clock=time.perf_counter) -> dict:
    generator = torch.Generator().manual_seed(batch)
    inputs = torch.randn(batch, 784, generator=generator).to(dtype)
    targets = torch.randint(0, 10, (batch,), generator=generator)
    models = {
        "none": _mlp(None),
        "torch": _mlp(lambda: nn.Dropout(0.5)),
        "dropkit": _mlp(lambda: dropkit.Dropout(0.5)),
    }
    steppers = {
        name: _step_fn(model.to(dtype).train(), inputs, targets) for name, model in models.items()
    }
    for step in steppers.values():
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(steps):
        for name, step in steppers.items():
            start = clock()
            step()
            samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="batch 256 fp32, 5 steps")
    parser.add_argument(
        "--cpu-time", action="store_true", help="1 thread, CPU time of the calling thread"
    )
    args = parser.parse_args()
    clock = time.perf_counter
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.thread_time
    batches = (256,) if args.quick else BATCHES
    dtypes = {"fp32": torch.float32} if args.quick else DTYPES
    steps = 5 if args.quick else args.steps

    print(
        f"date {date.today()} | {torch.get_num_threads()} torch threads | torch {torch.__version__}"
        f" | dropkit backend {kernels.backend_name(torch.empty(0))} | median of {steps} steps"
        f" | {'CPU time of the calling thread' if args.cpu_time else 'wall time'}"
        f" | load average {loadavg()}"
    )
    print(
        "\n| weights | batch | no dropout ms | torch.nn.Dropout ms (overhead) "
        "| dropkit.Dropout ms (overhead) |"
    )
    print("|---|---|---|---|---|")
    for dtype_label, dtype in dtypes.items():
        for batch in batches:
            timings = _measure(batch, dtype, steps, clock)
            base = timings["none"]
            cells = [
                f"{timings[name] * 1e3:.2f} ({(timings[name] / base - 1) * 100:+.0f}%)"
                for name in ("torch", "dropkit")
            ]
            print(f"| {dtype_label} | {batch} | {base * 1e3:.2f} | " + " | ".join(cells) + " |")
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
