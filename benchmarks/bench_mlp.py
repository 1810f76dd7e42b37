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
training step as a ladder of models measured side by side, each adding one piece:
one torch element-wise op (``x * 2``), the C++ op's memory pass without Philox, with
Philox, the module and its checks, and the Python route (``DROPKIT_DISPATCH=0``'s).

``--compile`` measures the batch-256 fp32 step under ``torch.compile`` (inductor) beside
``x * 2`` (which inductor fuses) and ``x * 2`` as an opaque custom op (which it cannot see
into, as it cannot see into dropkit's CPU kernel).

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
from dropkit import _ops, kernels
from dropkit.random import keep_scale

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
    if _ops._dispatch is not None:
        models["python route"] = _mlp(lambda: dropkit.Dropout(0.5))
    steppers = {
        name: _step_fn(model.to(dtype).train(), inputs, targets) for name, model in models.items()
    }
    if "python route" in steppers:
        steppers["python route"] = _python_route(steppers["python route"])
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


def _ladder(steppers: dict, steps: int, trials: int, setting: str) -> None:
    """Warm each step up (compiling it if it is compiled), time them interleaved in
    ``trials`` rounds of ``steps``, and print each rung's overhead over the first rung."""
    for step in steppers.values():
        for _ in range(3):
            step()
    first = next(iter(steppers))
    overheads: dict[str, list[float]] = {label: [] for label in steppers}
    bases = []
    for _ in range(trials):
        samples: dict[str, list[float]] = {label: [] for label in steppers}
        for _ in range(steps):
            for label, step in steppers.items():
                start = time.perf_counter()
                step()
                samples[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(values) for label, values in samples.items()}
        bases.append(medians[first])
        for label, value in medians.items():
            overheads[label].append((value / medians[first] - 1) * 100)
    print(f"{setting}, {trials} trials of {steps} interleaved steps; {first} step "
          f"{statistics.median(bases) * 1e3:.2f} ms (median over trials)")
    print("| two layers of | overhead per trial | median |")
    print("|---|---|---|")
    for label, values in list(overheads.items())[1:]:
        cells = " / ".join(f"{v:+.1f}" for v in values)
        print(f"| {label} | {cells} | {statistics.median(values):+.1f}% |")


class _Scaled(nn.Module):
    """``x * 2``: one torch element-wise op forward and backward, the floor for any one-pass op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class _DirectOp(nn.Module):
    """The C++ eager op called straight from ``forward``: no argument checks, no layering."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.threshold, _, self.scale = keep_scale(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ops._dispatch.apply(x, None, None, 0, self.threshold, self.scale, False)


def _python_route(step):
    """``step`` with the C++ eager op switched off: dropkit's Python route."""
    fast = _ops._dispatch

    def run() -> None:
        _ops._dispatch = None
        try:
            step()
        finally:
            _ops._dispatch = fast

    return run


def _breakdown(steps: int, trials: int = 5) -> None:
    if _ops._dispatch is None:
        print(f"eager op: {kernels.dispatch_status()}; the ladder needs the C++ op")
        return
    generator = torch.Generator().manual_seed(256)
    inputs = torch.randn(256, 784, generator=generator)
    targets = torch.randint(0, 10, (256,), generator=generator)
    # A ladder: each rung adds one piece of what dropkit.Dropout does in the step.
    rungs = {
        "no dropout": None,
        "x * 2 (one torch element-wise op)": _Scaled,
        "C++ op, keep all (one pass, no Philox)": lambda: _DirectOp(1e-9),
        "C++ op, p = 0.5 (+ Philox)": lambda: _DirectOp(0.5),
        "dropkit.Dropout(0.5) (+ module and checks)": lambda: dropkit.Dropout(0.5),
        "dropkit.Dropout(0.5), Python route": lambda: dropkit.Dropout(0.5),
        "torch.nn.Dropout(0.5)": lambda: nn.Dropout(0.5),
    }
    steppers = {
        label: _step_fn(_mlp(factory).train(), inputs, targets) for label, factory in rungs.items()
    }
    steppers["dropkit.Dropout(0.5), Python route"] = _python_route(
        steppers["dropkit.Dropout(0.5), Python route"]
    )
    _ladder(steppers, steps, trials, "batch 256 fp32")


@torch.library.custom_op("dropkit_bench::scaled", mutates_args=())
def _opaque_scaled(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0


@_opaque_scaled.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


_opaque_scaled.register_autograd(
    lambda ctx, grad: _opaque_scaled(grad), setup_context=lambda ctx, inputs, output: None
)


class _OpaqueScaled(nn.Module):
    """``x * 2`` as an opaque custom op: what inductor can do around any op it cannot see into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _opaque_scaled(x)


def _compiled(steps: int, trials: int = 3) -> None:
    """The batch-256 fp32 step under ``torch.compile`` (inductor), a ladder side by side."""
    generator = torch.Generator().manual_seed(256)
    inputs = torch.randn(256, 784, generator=generator)
    targets = torch.randint(0, 10, (256,), generator=generator)
    rungs = {
        "no dropout": None,
        "x * 2 (inductor fuses it)": _Scaled,
        "x * 2 as an opaque custom op": _OpaqueScaled,
        "dropkit.Dropout(0.5)": lambda: dropkit.Dropout(0.5),
        "torch.nn.Dropout(0.5)": lambda: nn.Dropout(0.5),
    }
    steppers = {
        # The optimiser steps the compiled module's parameters, which are the model's.
        label: _step_fn(torch.compile(_mlp(factory).train()), inputs, targets)
        for label, factory in rungs.items()
    }
    _ladder(steppers, steps, trials, "torch.compile (inductor), batch 256 fp32")


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
    parser.add_argument(
        "--compile", action="store_true",
        help="the batch-256 step under torch.compile (inductor), beside x * 2 fused and opaque",
    )
    args = parser.parse_args()
    if args.compile:
        print(f"date {date.today()} | load average {loadavg()} | {torch.get_num_threads()} "
              f"torch threads | torch {torch.__version__}")
        _compiled(5 if args.quick else args.steps, 1 if args.quick else 3)
        return
    if args.breakdown:
        print(f"date {date.today()} | load average {loadavg()} | {torch.get_num_threads()} "
              f"torch threads | dropkit backend {kernels.backend_name(torch.empty(0))}")
        _breakdown(10 if args.quick else args.steps, 2 if args.quick else 5)
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
        f" | dropkit backend {kernels.backend_name(torch.empty(0))}, eager op "
        f"{kernels.dispatch_status()} | median of {steps} steps"
        f" | {'CPU time of the calling thread' if args.cpu_time else 'wall time'}"
        f" | load average {loadavg()}"
    )
    routes = ("torch", "dropkit") + (("python route",) if _ops._dispatch is not None else ())
    print(
        "\n| weights | batch | no dropout ms | torch.nn.Dropout ms (overhead) "
        "| dropkit.Dropout ms (overhead) |"
        + (" dropkit, Python route ms (overhead) |" if len(routes) == 3 else "")
    )
    print("|---|---|---|---|---|" + ("---|" if len(routes) == 3 else ""))
    for dtype_label, dtype in dtypes.items():
        for batch in batches:
            timings = _measure(batch, dtype, steps, clock)
            base = timings["none"]
            cells = [
                f"{timings[name] * 1e3:.2f} ({(timings[name] / base - 1) * 100:+.1f}%)"
                for name in routes
            ]
            print(f"| {dtype_label} | {batch} | {base * 1e3:.2f} | " + " | ".join(cells) + " |")
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
