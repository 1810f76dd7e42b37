"""Dropout on the GPU: dropkit's Triton backend vs torch vs a device copy, ratios in one run.

Without CUDA it says so and exits 0. On a GPU it prints, each as median
milliseconds of ``--repeats`` CUDA-event timings taken round-robin (so clock
and thermal drift hit every contender alike), with ratios to ``copy_``:

* forward: ``y.copy_(x)``, ``torch.nn.functional.dropout``, dropkit, for
  float32 and bfloat16 at 16M and 64M elements, and the fraction of copy
  bandwidth dropkit reaches (``copy_ ms / dropkit ms``);
* backward: the gradient of each dropout's output (graph kept);
* bytes saved for backward per call (``saved_tensors_hooks``);
* ``bias_dropout_add(x, bias, residual, 0.1, activation="gelu")``
  forward and forward+backward vs the eager torch chain
  ``residual + dropout(gelu(x + bias))`` vs that chain under ``torch.compile``;
* per-call cost at 4,096 elements (launch and Python overhead, not bandwidth).

Run: ``python benchmarks/bench_gpu.py`` (``--quick``: 1M elements, 5 repeats,
no compile). ``benchmarks/gpu_check.sh`` runs it with the GPU tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import date

import torch
import torch.nn.functional as F

import dropkit
from dropkit import kernels

SIZES = {"16M": 1 << 24, "64M": 1 << 26}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
P = 0.5


def _loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _time(contenders: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per contender, one warm-up each, then round-robin with CUDA events."""
    for fn in contenders.values():
        fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {name: statistics.median(values) for name, values in samples.items()}


def _print_table(title: str, rows: list[tuple[str, dict[str, float]]], base: str) -> None:
    names = list(dict.fromkeys(name for _, timings in rows for name in timings))
    print(f"\n{title}: median ms (ratio to {base})")
    print("| case | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for case, timings in rows:
        cells = [
            f"{timings[n]:.3f} ({timings[n] / timings[base]:.2f}x)" if n in timings else "-"
            for n in names
        ]
        print(f"| {case} | " + " | ".join(cells) + " |")


def _mask_rows(sizes: dict, repeats: int) -> tuple[list, list]:
    forward, backward = [], []
    for dtype_label, dtype in DTYPES.items():
        for size_label, numel in sizes.items():
            x = torch.randn(numel, device="cuda").to(dtype)
            out = torch.empty_like(x)
            case = f"{size_label} {dtype_label}"
            forward.append((case, _time({
                "copy_": lambda x=x, out=out: out.copy_(x),
                "torch": lambda x=x: F.dropout(x, P, True),
                "dropkit": lambda x=x: dropkit.functional.dropout(x, P),
            }, repeats)))
            leaf = x.detach().requires_grad_()
            grad = torch.randn_like(x)
            y_torch, y_dropkit = F.dropout(leaf, P, True), dropkit.functional.dropout(leaf, P)
            backward.append((case, _time({
                "copy_": lambda grad=grad, out=out: out.copy_(grad),
                "torch": lambda y=y_torch, leaf=leaf, grad=grad: torch.autograd.grad(
                    y, leaf, grad, retain_graph=True),
                "dropkit": lambda y=y_dropkit, leaf=leaf, grad=grad: torch.autograd.grad(
                    y, leaf, grad, retain_graph=True),
            }, repeats)))
            del x, out, leaf, grad, y_torch, y_dropkit
            torch.cuda.empty_cache()
    return forward, backward


def _print_bandwidth(rows: list, title: str) -> None:
    print(f"\n{title}: dropkit at this fraction of copy_ bandwidth (same bytes moved)")
    for case, timings in rows:
        print(f"  {case}: {timings['copy_'] / timings['dropkit']:.1%} "
              f"(torch {timings['copy_'] / timings['torch']:.1%}); "
              f"dropkit {timings['torch'] / timings['dropkit']:.2f}x torch's speed")


def _saved_bytes(fn, x: torch.Tensor) -> int:
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() != x.data_ptr():  # x itself is saved by reference
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(x)
    return sum(saved)


def _torch_chain(x, bias, residual):
    return residual + F.dropout(F.gelu(x + bias), 0.1, True)


def _training_step(fn, leaves: list[torch.Tensor]):
    def run():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    return run


def _fused_rows(numel: int, repeats: int, compile_chain: bool) -> list:
    hidden = 4096
    rows = []
    compiled = torch.compile(_torch_chain) if compile_chain else None
    for dtype_label, dtype in DTYPES.items():
        x, residual = (torch.randn(numel // hidden, hidden, device="cuda").to(dtype)
                       for _ in range(2))
        bias = torch.randn(hidden, device="cuda").to(dtype)

        def fused(x=x, bias=bias, residual=residual):
            return dropkit.functional.bias_dropout_add(x, bias, residual, 0.1, activation="gelu")

        def dropkit_chain(x=x, bias=bias, residual=residual):
            return residual + dropkit.functional.dropout(F.gelu(x + bias), 0.1)

        contenders = {
            "torch eager chain": lambda x=x, bias=bias, residual=residual: _torch_chain(
                x, bias, residual),
            "dropkit eager chain": dropkit_chain,
            "dropkit fused": fused,
        }
        if compiled is not None:
            contenders["torch.compile chain"] = lambda x=x, bias=bias, residual=residual: compiled(
                x, bias, residual)
        rows.append((f"forward {dtype_label}", _time(contenders, repeats)))

        leaves = [t.detach().requires_grad_() for t in (x, bias, residual)]
        training = {
            "torch eager chain": _training_step(_torch_chain, leaves),
            "dropkit eager chain": _training_step(
                lambda a, b, c: c + dropkit.functional.dropout(F.gelu(a + b), 0.1), leaves),
            "dropkit fused": _training_step(
                lambda a, b, c: dropkit.functional.bias_dropout_add(
                    a, b, c, 0.1, activation="gelu"), leaves),
        }
        if compiled is not None:
            training["torch.compile chain"] = _training_step(compiled, leaves)
        rows.append((f"fwd+bwd {dtype_label}", _time(training, repeats)))
        del x, residual, bias, leaves, training
        torch.cuda.empty_cache()
    return rows


def _per_call(calls: int) -> None:
    x = torch.randn(4096, device="cuda")
    print(f"\nPer-call cost at 4096 elements (mean of {calls} calls, host-bound: launch overhead)")
    for name, fn in (
        ("torch.nn.functional.dropout", lambda: F.dropout(x, P, True)),
        ("dropkit.functional.dropout", lambda: dropkit.functional.dropout(x, P)),
        ("dropkit kernels.mask_scale", lambda: kernels.mask_scale(x, 1, 0, 32768, 2.0)),
    ):
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        print(f"  {name:30s} {start.elapsed_time(end) * 1e3 / calls:8.2f} us/call")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1M elements, 5 repeats, no compile")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile chain")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device on this machine (torch.cuda.is_available() is "
              "False); nothing measured. Run it on a GPU, e.g. via benchmarks/gpu_check.sh.")
        return 0
    sizes = {"1M": 1 << 20} if args.quick else SIZES
    repeats = 5 if args.quick else args.repeats
    props = torch.cuda.get_device_properties(0)
    print(
        f"date {date.today()} | {props.name} ({props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB) | torch {torch.__version__} | "
        f"dropkit backend {kernels.backend_name(torch.empty(0, device='cuda'))} | "
        f"load average {_loadavg()}"
    )

    forward, backward = _mask_rows(sizes, repeats)
    _print_table("Forward", forward, "copy_")
    _print_bandwidth(forward, "Forward")
    _print_table("Backward (gradient of the dropout output)", backward, "copy_")
    _print_bandwidth(backward, "Backward")

    print("\nSaved for backward by one dropout call on 1M elements (beyond the input itself):")
    for dtype_label, dtype in DTYPES.items():
        x = torch.randn(1 << 20, device="cuda").to(dtype).requires_grad_()
        for name, fn in (("torch", lambda t: F.dropout(t, P)),
                         ("dropkit", dropkit.functional.dropout)):
            saved = _saved_bytes(fn, x)
            print(f"  {dtype_label} {name:8s} {saved:>10d} bytes = "
                  f"{saved / x.numel():.6f} bytes/element")

    fused = _fused_rows(next(iter(sizes.values())), repeats, not (args.quick or args.no_compile))
    _print_table(
        f"bias_dropout_add, gelu, p=0.1, {next(iter(sizes))} elements (hidden 4096)",
        fused, "torch eager chain",
    )
    _per_call(200 if args.quick else 2000)
    print(f"\nload average at the end {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
