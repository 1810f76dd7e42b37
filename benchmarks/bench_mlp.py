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

``--profile`` prints, instead of timings, torch.profiler's table of the
dropkit model's training steps at batch 256 (fp32) and the per-call CPU time
of one dropout forward and forward+backward on a tiny tensor (dispatch cost,
not kernel), dropkit next to torch: where the overhead that is not the
kernel goes.

``--breakdown`` splits dropkit's overhead at batch 256 (fp32, 2 threads) inside the
training step: the kernel's own time per call, the time from the module's forward to
the kernel (Python and dispatch), and how much slower a fixed piece of Python runs
right after a Linear+ReLU than on warm caches.

Run: ``python benchmarks/bench_mlp.py`` (``--quick`` for a smoke run). To see
whether torch's OpenMP workers spinning after a parallel region slow the
kernel's own threads, compare with ``OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_mlp.py``.
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


def _dispatch_us(module: nn.Module, backward: bool, calls: int = 2000) -> float:
    """CPU microseconds per call on an 8x8 tensor: the fixed cost of one dropout call."""
    h = torch.randn(8, 8, requires_grad=True) * 1
    start = time.thread_time()
    for _ in range(calls):
        out = module(h)
        if backward:
            out.sum().backward(retain_graph=True)
    return (time.thread_time() - start) / calls * 1e6


def _profile(steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator().manual_seed(256)
    inputs = torch.randn(256, 784, generator=generator)
    targets = torch.randint(0, 10, (256,), generator=generator)
    step = _step_fn(_mlp(lambda: dropkit.Dropout(0.5)).train(), inputs, targets)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for label, backward in (("forward", False), ("forward+backward", True)):
        ours = _dispatch_us(dropkit.Dropout(0.5), backward)
        theirs = _dispatch_us(nn.Dropout(0.5), backward)
        print(f"{label} per call on 8x8: dropkit {ours:.1f} us, torch {theirs:.1f} us (CPU time)")


def _breakdown(steps: int) -> None:
    native = kernels._native
    if native is None:
        print("the native kernel is not built: nothing to break down")
        return
    marks: list[tuple[str, float]] = []

    class _Timed:
        """The native module, with a timestamp before and after each kernel call."""

        def __getattr__(self, name):
            return getattr(native, name)

        def mask_scale(self, *args):
            marks.append(("kernel start", time.perf_counter()))
            native.mask_scale(*args)
            marks.append(("kernel end", time.perf_counter()))

    def entered(module: nn.Module) -> nn.Module:
        forward = module.forward

        def timed(x):
            marks.append(("forward start", time.perf_counter()))
            out = forward(x)
            marks.append(("forward end", time.perf_counter()))
            return out

        module.forward = timed
        return module

    generator = torch.Generator().manual_seed(256)
    inputs = torch.randn(256, 784, generator=generator)
    targets = torch.randint(0, 10, (256,), generator=generator)
    model = _mlp(lambda: entered(dropkit.Dropout(0.5))).train()
    step, plain = _step_fn(model, inputs, targets), _step_fn(_mlp(None).train(), inputs, targets)
    kernels._native = _Timed()
    try:
        for _ in range(3):
            step()
            plain()
        marks.clear()
        with_dropout, without = [], []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            with_dropout.append(time.perf_counter() - start)
            start = time.perf_counter()
            plain()
            without.append(time.perf_counter() - start)
    finally:
        kernels._native = native
    gaps: dict[str, list[float]] = {}
    for (first, t0), (second, t1) in zip(marks, marks[1:], strict=False):
        gaps.setdefault(f"{first} -> {second}", []).append(t1 - t0)
    base, ours = statistics.median(without), statistics.median(with_dropout)
    print(f"step: no dropout {base * 1e3:.2f} ms, dropkit {ours * 1e3:.2f} ms "
          f"({(ours / base - 1) * 100:+.1f}%, {(ours - base) * 1e6:.0f} us per step)")
    for label in ("forward start -> kernel start", "kernel start -> kernel end",
                  "kernel end -> forward end", "kernel end -> kernel start"):
        values = gaps.get(label, [])
        if values:
            print(f"  {label:32s} median {statistics.median(values) * 1e6:7.1f} us "
                  f"({len(values)} intervals)")
    print("  (kernel end -> kernel start spans a forward's end to the next backward's kernel)")

    x, layer = torch.randn(256, 1024, requires_grad=True), nn.Linear(1024, 1024)

    def python_us(before) -> float:
        times = []
        for _ in range(300):
            before()
            start = time.perf_counter()
            total = 0
            for i in range(200):
                total += i * 2
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6

    warm, cold = python_us(lambda: None), python_us(lambda: torch.relu(layer(x)))
    print(f"a 200-step Python loop: {warm:.1f} us on warm caches, {cold:.1f} us right after a "
          f"Linear(1024, 1024)+ReLU at batch 256 ({cold / warm:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="batch 256 fp32, 5 steps")
    parser.add_argument(
        "--cpu-time", action="store_true", help="1 thread, CPU time of the calling thread"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profiler table and per-call dispatch cost"
    )
    parser.add_argument(
        "--breakdown", action="store_true",
        help="where dropkit's overhead goes inside the step (kernel, dispatch, cold caches)",
    )
    args = parser.parse_args()
    if args.breakdown:
        print(f"date {date.today()} | load average {loadavg()} | {torch.get_num_threads()} "
              f"torch threads | dropkit backend {kernels.backend_name(torch.empty(0))}")
        _breakdown(10 if args.quick else max(args.steps, 60))
        return
    if args.profile:
        print(f"load average {loadavg()} | {torch.get_num_threads()} torch threads")
        _profile(5 if args.quick else args.steps)
        return
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
                f"{timings[name] * 1e3:.2f} ({(timings[name] / base - 1) * 100:+.1f}%)"
                for name in ("torch", "dropkit")
            ]
            print(f"| {dtype_label} | {batch} | {base * 1e3:.2f} | " + " | ".join(cells) + " |")
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
