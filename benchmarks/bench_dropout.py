"""Dropout op speed: dropkit vs torch vs memcpy, as ratios measured in one run.

For each size (1M/16M/64M elements) and dtype (float32, bfloat16) it times,
round-robin so that machine noise hits every contender alike, the median of
``--repeats`` runs of:

* ``copy_``      ``y.copy_(x)`` into a preallocated ``y`` (the memcpy floor);
* ``clone``      ``x.clone()``: memcpy plus allocating the output, which every
                 dropout below also pays;
* ``torch``      ``torch.nn.functional.dropout(x, 0.5, True)``;
* ``compiled``   ``torch.compile``'d torch dropout (16M only: compiling is slow);
* ``dropkit``    ``dropkit.functional.dropout(x, 0.5)`` (the backend it reports);
* ``reference``  dropkit's pure-PyTorch reference kernel (1M only);

then the backward pass (``torch.autograd.grad`` of the output, graph kept)
for torch and dropkit. It ends with the bytes per element that each dropout
saves for backward, measured with ``torch.autograd.graph.saved_tensors_hooks``.

Run: ``python benchmarks/bench_dropout.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn.functional as F
from _machine import loadavg

import dropkit
from dropkit import kernels
from dropkit.kernels import reference

SIZES = {"1M": 1 << 20, "16M": 1 << 24, "64M": 1 << 26}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
P = 0.5


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time_round_robin(contenders: dict, repeats: int) -> dict[str, float]:
    """Median seconds per contender; one warm-up call each, then interleaved repeats."""
    for fn in contenders.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _forward_contenders(x: torch.Tensor, label: str, compiled) -> dict:
    out = torch.empty_like(x)
    contenders = {
        "copy_": lambda: out.copy_(x),
        "clone": lambda: x.clone(),
        "torch": lambda: F.dropout(x, P, True),
    }
    if compiled is not None and label == "16M":
        contenders["compiled"] = lambda: compiled(x)
    contenders["dropkit"] = lambda: dropkit.functional.dropout(x, P)
    if label == "1M":
        threshold = round((1 - P) * 65536)
        contenders["reference"] = lambda: reference.mask_scale(
            x, 1, 0, threshold, 65536 / threshold
        )
    return contenders


def _backward_contenders(x: torch.Tensor) -> dict:
    leaf = x.detach().requires_grad_()
    grad = torch.randn_like(x)
    out = torch.empty_like(x)
    y_torch = F.dropout(leaf, P, True)
    y_dropkit = dropkit.functional.dropout(leaf, P)
    return {
        "copy_": lambda: out.copy_(grad),
        "torch": lambda: torch.autograd.grad(y_torch, leaf, grad, retain_graph=True),
        "dropkit": lambda: torch.autograd.grad(y_dropkit, leaf, grad, retain_graph=True),
    }


def _print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    names = list(dict.fromkeys(name for _, timings in rows for name in timings))
    print(f"\n{title}: median ms (ratio to copy_)")
    print("| case | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for case, timings in rows:
        base = timings["copy_"]
        cells = [
            f"{timings[name] * 1e3:.2f} ({timings[name] / base:.2f}x)" if name in timings else "-"
            for name in names
        ]
        print(f"| {case} | " + " | ".join(cells) + " |")


def _forced_isa(isa: str, fn):
    def run():
        kernels.native_module().set_isa(isa)
        return fn()

    return run



def _cpu_time_single_thread(numel: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """Median CPU seconds of one thread, in place, no allocation: the kernel's own cost.

    CPU time of the calling thread is insensitive to other processes on the
    machine, so this isolates compute from the shared cores' load.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    threshold = round((1 - P) * 65536)
    x = torch.randn(numel).to(dtype)
    y = torch.empty_like(x)
    contenders = {
        "copy_": lambda: y.copy_(x),
        "torch dropout_": lambda: F.dropout(y, P, True, inplace=True),
        "dropkit": lambda: kernels.mask_scale_(y, 1, 0, threshold, 65536 / threshold),
    }
    native = kernels.native_module()
    # Every instruction-set path this CPU can run, side by side with the
    # default ("dropkit" = the best one), so the gain of each is measured.
    for isa in native.available_isas() if native is not None else ():
        contenders[f"dropkit {isa}"] = _forced_isa(
            isa, lambda: kernels.mask_scale_(y, 1, 0, threshold, 65536 / threshold)
        )
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for _ in range(repeats):
            for name, fn in contenders.items():
                start = time.thread_time()
                fn()
                samples[name].append(time.thread_time() - start)
    finally:
        torch.set_num_threads(previous)
        if native is not None:
            native.set_isa("auto")
    return {name: statistics.median(values) for name, values in samples.items()}


def _saved_bytes_per_element(fn, x: torch.Tensor) -> float:
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Inputs saved by reference (x itself) cost nothing extra; count only
        # tensors the op allocated for backward.
        if tensor.data_ptr() != x.data_ptr():
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(x)
    return sum(saved) / x.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1M only, 3 repeats, no compile")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--cpu-time-only", action="store_true", help="only the 1-thread table")
    args = parser.parse_args()
    sizes = {"1M": SIZES["1M"]} if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats

    print(
        f"date {date.today()} | {_cpu_model()} | {torch.get_num_threads()} torch threads | "
        f"torch {torch.__version__} | dropkit backend {kernels.backend_name(torch.empty(0))} | "
        f"load average {loadavg()}"
    )
    compiled = None
    if not (args.quick or args.no_compile):
        compiled = torch.compile(lambda t: F.dropout(t, P, True))

    cpu_rows = [
        (f"16M {label}", _cpu_time_single_thread(SIZES["16M"], dtype, repeats))
        for label, dtype in DTYPES.items()
    ]
    _print_table("One thread, in place, CPU time of the calling thread", cpu_rows)
    if args.cpu_time_only:
        print(f"\nload average at the end {loadavg()}")
        return

    forward_rows, backward_rows = [], []
    for dtype_label, dtype in DTYPES.items():
        for size_label, numel in sizes.items():
            x = torch.randn(numel).to(dtype)
            case = f"{size_label} {dtype_label}"
            forward_rows.append(
                (case, _time_round_robin(_forward_contenders(x, size_label, compiled), repeats))
            )
            backward_rows.append((case, _time_round_robin(_backward_contenders(x), repeats)))
            del x
    _print_table("Forward", forward_rows)
    _print_table("Backward (gradient of the dropout output)", backward_rows)

    print("\nSaved for backward by one dropout call on 1M elements (beyond the input itself):")
    for dtype_label, dtype in DTYPES.items():
        x = torch.randn(1 << 20).to(dtype).requires_grad_()
        for name, fn in (
            ("torch", lambda t: F.dropout(t, P)),
            ("dropkit", dropkit.functional.dropout),
        ):
            per_element = _saved_bytes_per_element(fn, x)
            print(
                f"  {dtype_label} {name:8s} {per_element * x.numel():>10.0f} bytes "
                f"= {per_element:.6f} bytes/element"
            )
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
