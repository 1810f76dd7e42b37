"""DropBlock and DropPath: dropkit vs timm (and torchvision when it imports), same inputs, one run.

Prints, per case, the median time of each contender (forward, and forward +
backward) and the ratio dropkit / fastest peer. Contenders are interleaved and
repeated so a noisy neighbour on the shared machine hits all of them alike.

timm's ``layers/drop.py`` depends on torch only, but ``import timm`` pulls in
torchvision; we load that one file directly so the comparison runs where
torchvision cannot import (its PyPI wheel does not load beside torch 2.13).

Run: ``.venv/bin/python benchmarks/bench_variants.py [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

import dropkit
from dropkit import kernels
from dropkit.functional import drop_block2d, drop_path


def load_timm_drop():
    """timm's ``layers/drop.py`` loaded on its own, or ``None`` when timm is absent."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "layers" / "drop.py"
    file_spec = importlib.util.spec_from_file_location("_timm_layers_drop", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def load_torchvision_ops():
    try:
        import torchvision.ops as ops
    except Exception as error:  # a broken wheel raises more than ImportError
        print(f"torchvision skipped: {type(error).__name__}: {str(error)[:80]}")
        return None
    return ops


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fwd_bwd(op: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run():
        x.grad = None
        op(x).sum().backward()

    return run


def bench(cases: dict[str, Callable], x: torch.Tensor, repeats: int, backward: bool) -> dict:
    inputs = x.detach().requires_grad_(backward)
    runners = {
        name: _fwd_bwd(op, inputs) if backward else (lambda op=op: op(inputs))
        for name, op in cases.items()
    }
    for run in runners.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            samples[name].append(_time(run))
    return {name: statistics.median(times) for name, times in samples.items()}


def report(title: str, medians: dict[str, float]) -> None:
    peers = {k: v for k, v in medians.items() if not k.startswith("dropkit")}
    fastest: Optional[str] = min(peers, key=peers.get) if peers else None
    cells = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items())
    ratio = ""
    if fastest:
        mine = min(v for k, v in medians.items() if k.startswith("dropkit"))
        ratio = f" | dropkit/{fastest} = {mine / peers[fastest]:.2f}"
    print(f"{title:<48} {cells}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    timm_drop = load_timm_drop()
    tv = load_torchvision_ops()
    print(
        f"dropkit {dropkit.__version__}, torch {torch.__version__}, backend "
        f"{kernels.backend_name(torch.ones(1))}, threads {torch.get_num_threads()}, {_cpu_name()}"
    )
    if timm_drop is None:
        print("timm not installed: `pip install --no-deps timm` to compare")
    torch.manual_seed(0)

    block_cases = [
        ("resnet stage3 (32,256,14,14) bs=7 p=0.1", (32, 256, 14, 14), 7),
        ("resnet stage2 (32,128,28,28) bs=5 p=0.1", (32, 128, 28, 28), 5),
    ]
    for title, shape, bs in block_cases:
        x = torch.randn(shape)
        for backward in (False, True):
            per_channel = {
                "dropkit": lambda t, bs=bs: drop_block2d(t, 0.1, bs),
            }
            shared = {
                "dropkit": lambda t, bs=bs: drop_block2d(t, 0.1, bs, share_channels=True),
            }
            if timm_drop is not None:
                per_channel["timm"] = lambda t, bs=bs: timm_drop.drop_block_2d(
                    t, 0.1, bs, couple_channels=False
                )
                shared["timm"] = lambda t, bs=bs: timm_drop.drop_block_2d(t, 0.1, bs)
            if tv is not None:
                per_channel["torchvision"] = lambda t, bs=bs: tv.drop_block2d(t, 0.1, bs)
            tag = "fwd+bwd" if backward else "fwd"
            report(
                f"DropBlock2d per-channel {title} {tag}",
                bench(per_channel, x, args.repeats, backward),
            )
            report(f"DropBlock2d shared-ch {title} {tag}", bench(shared, x, args.repeats, backward))

    for title, shape in [
        ("ViT-S tokens (64,197,384)", (64, 197, 384)),
        ("ResNet map (64,256,14,14)", (64, 256, 14, 14)),
    ]:
        x = torch.randn(shape)
        for backward in (False, True):
            cases = {"dropkit": lambda t: drop_path(t, 0.1)}
            if timm_drop is not None:
                cases["timm"] = lambda t: timm_drop.drop_path(t, 0.1, True)
            if tv is not None:
                cases["torchvision"] = lambda t: tv.stochastic_depth(t, 0.1, "row", True)
            tag = "fwd+bwd" if backward else "fwd"
            report(f"DropPath {title} {tag}", bench(cases, x, args.repeats, backward))


if __name__ == "__main__":
    main()
