"""MC dropout speed: T=100 on a CNN whose dropout is only in its classifier head.

Compares, in one run on the same model and input:
  * loop      - T full forward passes with dropout sampling (what most libraries do);
  * baal      - baal's ModelWrapper + MCDropoutModule, both of its modes
                (replicate_in_memory=True: one pass on T stacked copies; False: a loop);
  * dropkit   - dropkit.mc.predict, fast path (torch.fx split: convolutions once,
                the head batched over T), unseeded and Philox-seeded.
Prints seconds (best of --repeats) and the speed-up over the loop. Also checks that the
seeded fast path equals the seeded loop exactly.

    python benchmarks/bench_mc.py [--samples 100] [--batch 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from dropkit import mc


class HeadDropoutCNN(nn.Module):
    """LeNet-style CNN for 28x28 images; dropout only in the fully connected head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = HeadDropoutCNN().eval()
    x = torch.randn(args.batch, 1, 28, 28)
    T = args.samples

    def plain_loop():
        with mc.mc_mode(model), torch.no_grad():
            return torch.stack([model(x) for _ in range(T)])

    threads = torch.get_num_threads()
    print(f"T={T}, batch={args.batch}, threads={threads}, torch {torch.__version__}", flush=True)
    print(f"{'method':50s} {'seconds':>9s} {'vs loop':>8s}", flush=True)
    rows: dict[str, float] = {}

    def report(name: str, fn, repeats: int = args.repeats) -> None:
        rows[name] = _best(fn, repeats)
        base = rows["plain loop (T full passes)"] if rows else rows[name]
        print(f"{name:50s} {rows[name]:9.3f} {base / rows[name]:7.1f}x", flush=True)

    report("plain loop (T full passes)", plain_loop)
    try:
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs

        for replicate in (True, False):
            wrapper = ModelWrapper(
                MCDropoutModule(copy.deepcopy(model)),
                TrainingArgs(criterion=None, replicate_in_memory=replicate, use_cuda=False),
            )
            wrapper.model.eval()
            label = f"baal ModelWrapper (replicate_in_memory={replicate})"
            report(label, lambda w=wrapper: w.predict_on_batch(x, T))
    except ImportError as error:
        print(f"baal skipped: {error} (pip install -e '.[baal]')")
    report("dropkit predict, fast path", lambda: mc.predict(model, x, T))
    report("dropkit predict, fast path, seed=0", lambda: mc.predict(model, x, T, seed=0))
    # The seeded loop regenerates Philox masks T times over: one timing is enough.
    report("dropkit predict, loop, seed=0", lambda: mc.predict(model, x, T, seed=0, fast=False), 1)
    small = x[:16]
    fast = mc.predict(model, small, T, seed=0).samples
    loop = mc.predict(model, small, T, seed=0, fast=False).samples
    print(f"seeded fast path == seeded loop (16 inputs): {torch.equal(fast, loop)}")

if __name__ == "__main__":
    main()
