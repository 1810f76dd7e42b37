"""dropkit.keras.Dropout against keras.layers.Dropout on each installed Keras backend.

Each backend runs in its own interpreter (Keras fixes the backend at import).
Within one process both layers are timed interleaved on the same input, so the
printed ratio is measured side by side; the load average is printed with it.

    python benchmarks/bench_keras.py            # torch and jax (whatever imports)
    DROPKIT_KERAS_TF_PYTHON=/path/to/python python benchmarks/bench_keras.py
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

SHAPES = [(256, 1024), (64, 56, 56, 64)]
REPEATS = 30

_WORKER = r"""
import time, statistics, numpy as np, keras
import dropkit.keras as dk
from dropkit.keras import functional as KF
backend = keras.backend.backend()

def sync(out):
    if backend == "jax":
        out.block_until_ready()
    elif backend == "tensorflow":
        out.numpy()

def compiled(function):
    if backend == "jax":
        import jax
        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(function, jit_compile=False)
    return None

def race(label, shape, ours, theirs):
    for f in (ours, theirs):
        sync(f())
    times = {{"dropkit": [], "keras": []}}
    for _ in range({repeats}):
        for name, f in (("dropkit", ours), ("keras", theirs)):
            start = time.perf_counter(); sync(f()); times[name].append(time.perf_counter() - start)
    a, b = statistics.median(times["dropkit"]), statistics.median(times["keras"])
    print(f"{{backend:<10}} {{label:<9}} {{str(shape):<18}} dropkit {{a * 1e3:8.2f}} ms  "
          f"keras {{b * 1e3:8.2f}} ms  keras/dropkit {{b / a:5.2f}}x", flush=True)

for shape in {shapes}:
    x = keras.ops.convert_to_tensor(np.random.RandomState(0).randn(*shape).astype("float32"))
    ours, theirs = dk.Dropout(0.5, seed=0), keras.layers.Dropout(0.5, seed=0)
    race("eager", shape, lambda: ours(x, training=True), lambda: theirs(x, training=True))
    seed = keras.ops.convert_to_tensor(np.array([0, 0], dtype="uint32"))
    f_ours = compiled(lambda v, s: KF.dropout(v, 0.5, seed=s))
    f_theirs = compiled(lambda v, s: keras.random.dropout(v, 0.5, seed=s))
    if f_ours is not None:
        race("compiled", shape, lambda: f_ours(x, seed), lambda: f_theirs(x, seed))
"""


def _interpreters() -> list[tuple[str, str]]:
    found = [("torch", sys.executable)]
    if importlib.util.find_spec("jax") is not None:
        found.append(("jax", sys.executable))
    if importlib.util.find_spec("tensorflow") is not None:
        found.append(("tensorflow", sys.executable))
    elif os.environ.get("DROPKIT_KERAS_TF_PYTHON"):
        found.append(("tensorflow", os.environ["DROPKIT_KERAS_TF_PYTHON"]))
    return found


def main() -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()}  "
          f"median of {REPEATS} interleaved training calls, rate 0.5, float32")
    source = _WORKER.format(shapes=SHAPES, repeats=REPEATS)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    for backend, python in _interpreters():
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([python, "-c", source], env=env, capture_output=True, text=True)
        print(done.stdout.strip())
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-2000:]}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
