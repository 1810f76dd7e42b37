"""Cost of RNGTracker.fork: one training step of a small MLP with and without a fork around
its forward, measured side by side (alternating blocks, best block) in one run, and the
cost of an empty fork.

    python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import contextlib
import timeit

import torch
from torch import nn

import dropkit
from dropkit.distributed import RNGTracker

REPEATS = 7
ALTERNATIONS = 30


def _best_us(statement, number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=REPEATS)) / number * 1e6


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), dropkit.Dropout(0.5),
        nn.Linear(512, 512), nn.ReLU(), dropkit.Dropout(0.5), nn.Linear(512, 10),
    )
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    tracker = RNGTracker()
    tracker.add("data-parallel", 0, 1)

    def step(context) -> None:
        with context:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()

    def empty_fork() -> None:
        with tracker.fork("data-parallel"):
            pass

    for _ in range(20):  # warm-up
        step(tracker.fork("data-parallel"))
    # Alternate short blocks of the two so that machine noise hits both alike;
    # the minimum over blocks is the least-disturbed estimate of each.
    plain, forked = [], []
    for _ in range(ALTERNATIONS):
        plain.append(timeit.timeit(lambda: step(contextlib.nullcontext()), number=10) / 10)
        forked.append(timeit.timeit(lambda: step(tracker.fork("data-parallel")), number=10) / 10)
    fork_only = _best_us(empty_fork, 500)
    plain_us, forked_us = min(plain) * 1e6, min(forked) * 1e6
    print(f"torch {torch.__version__}, 1 thread, MLP 64-512-512-10, batch 64, 2 dropout layers")
    print(f"{'training step, no fork':<32}{plain_us:>10.1f} us")
    print(f"{'training step, in a fork':<32}{forked_us:>10.1f} us")
    print(f"{'empty fork (enter + exit)':<32}{fork_only:>10.1f} us")
    print(f"{'step in fork / plain step':<32}{forked_us / plain_us:>10.3f}")
    print(f"{'empty fork / plain step':<32}{fork_only / plain_us:>10.4f}")


if __name__ == "__main__":
    main()
