"""One active-learning acquisition round: dropkit vs baal 2.x on the same model and pool.

A round = T MC-dropout predictions on every pool image + an acquisition heuristic +
choosing the batch. Compared in one run, on the Bayesian CNN of Gal et al. (2017)
(dropout only after the convolutions) and one random pool of 28x28 images:

  * dropkit  - ``mc.predict`` (fast path: convolutions once, the head batched over T)
               + ``acquisition.bald`` + ``select``; and ``acquisition.batch_bald``
               on consistent-mask samples;
  * baal     - ``ModelWrapper.predict_on_dataset`` (+ ``MCDropoutModule``)
               + ``BALD`` / ``BatchBALD`` heuristics.

Prints seconds per round (best of --repeats) and the ratio baal / dropkit, the peak
extra memory of ``batch_bald`` for a batch of --batch (growth of the peak resident
set in a fresh process, beside the bound its buffers imply), and the load average
(a loaded machine inflates both sides; run on a quiet one).

    python benchmarks/bench_acquisition.py [--pool 10000] [--samples 20] [--batch 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time

import torch

from dropkit import acquisition, mc
from dropkit.lab.reproduce.gal2017_active_mnist import PaperCNN


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


_PEAK_SCRIPT = """
import resource, sys, torch
from dropkit import acquisition
probs = torch.load(sys.argv[1])
k = int(sys.argv[2])
acquisition.bald(probs[:, :2])  # import-time and first-call allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
acquisition.batch_bald(probs, k, seed=0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def _peak_bytes(probs: torch.Tensor, k: int) -> int:
    """Growth of the peak resident set while batch_bald runs, in a fresh process
    (ru_maxrss is a process-wide high-water mark, so it needs a process of its own)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probs.pt")
        torch.save(probs, path)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, path, str(k)],
            check=True, capture_output=True, text=True, env=os.environ,
        )
    return int(out.stdout.strip().splitlines()[-1])


def _batch_bald_bytes(samples: int, pool: int, classes: int, batch: int,
                      max_configurations: int, chunk_bytes: int) -> int:
    """Upper bound on batch_bald's working memory beyond its (T, N, C) input, from its design:
    the float64 copy of the input, the carried (T, M) joint matrix, one pool chunk's
    (M, chunk, C) mixture and log term, and a few (N,) vectors."""
    configurations = min(max_configurations, classes ** max(batch - 1, 0))
    per_input = configurations * classes * 8 * 2
    chunk = max(1, min(pool, chunk_bytes // per_input))
    return (
        samples * pool * classes * 8
        + samples * configurations * 8 * 2
        + chunk * per_input
        + 4 * pool * 8
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baal-batch-size", type=int, default=500,
                        help="baal's DataLoader batch (inputs per predict_on_batch call)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PaperCNN().eval()
    pool = torch.rand(args.pool, 1, 28, 28)
    samples, k = args.samples, args.batch
    print(
        f"pool={args.pool}, T={samples}, batch={k}, threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}, load average {os.getloadavg()}",
        flush=True,
    )

    def dropkit_bald():
        probs = mc.predict(model, pool, samples, seed=0).probs
        return acquisition.select(acquisition.bald(probs), k)

    def dropkit_batch_bald():
        probs = mc.predict(model, pool, samples, seed=0, consistent=True).probs
        return acquisition.batch_bald(probs, k, seed=0).indices

    rows: dict[str, float] = {}
    rows["dropkit: mc.predict + bald + select"], _ = _best(dropkit_bald, args.repeats)
    rows["dropkit: mc.predict(consistent) + batch_bald"], _ = _best(dropkit_batch_bald, 1)
    try:
        from baal.active.heuristics import BALD, BatchBALD
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs
    except ImportError as error:
        print(f"baal skipped: {error} (pip install -e '.[baal]')")
    else:
        wrapper = ModelWrapper(
            MCDropoutModule(copy.deepcopy(model)),
            TrainingArgs(criterion=None, replicate_in_memory=True, use_cuda=False,
                         batch_size=args.baal_batch_size, workers=0),
        )
        dataset = torch.utils.data.TensorDataset(pool, torch.zeros(args.pool))

        def baal_predict():
            return wrapper.predict_on_dataset(dataset, samples, verbose=False)

        def baal_bald():
            return BALD()(baal_predict())[:k]

        def baal_batch_bald():
            return BatchBALD(num_samples=k - 1)(baal_predict())[:k]

        rows["baal: predict_on_dataset + BALD"], _ = _best(baal_bald, args.repeats)
        rows["baal: predict_on_dataset + BatchBALD"], _ = _best(baal_batch_bald, 1)
    print(f"{'method':48s} {'s/round':>9s}")
    for name, seconds in rows.items():
        print(f"{name:48s} {seconds:9.3f}")
    pairs = [("BALD", "baal: predict_on_dataset + BALD", "dropkit: mc.predict + bald + select"),
             ("BatchBALD", "baal: predict_on_dataset + BatchBALD",
              "dropkit: mc.predict(consistent) + batch_bald")]
    for label, theirs, ours in pairs:
        if theirs in rows:
            print(f"{label}: baal / dropkit = {rows[theirs] / rows[ours]:.1f}x")

    probs = mc.predict(model, pool, samples, seed=0, consistent=True).probs
    peak = _peak_bytes(probs, k)
    bound = _batch_bald_bytes(samples, args.pool, probs.shape[-1], k, 4096, 64 << 20)
    print(f"batch_bald, batch of {k}: input (T, N, C) float32 "
          f"{probs.numel() * 4 / 2**20:.1f} MiB; working memory bound from its buffers "
          f"{bound / 2**20:.1f} MiB; measured peak RSS growth {peak / 2**20:.1f} MiB")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
