"""dropkit.keras on every Keras backend that is installed, each in its own process.

Keras fixes its backend when it is first imported, so each backend runs
``backend_cases.py`` in a fresh interpreter. torch and Keras' NumPy backend are
always there; JAX runs when it imports; TensorFlow runs when it imports here or when
``DROPKIT_KERAS_TF_PYTHON`` names an interpreter that has it (TensorFlow is a
2.4 GB install, so CI does not carry it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("backend_cases.py")
SRC = Path(__file__).resolve().parents[2] / "src"

# Only looked up, not imported: Keras picks its backend at import (TensorFlow by default).
if importlib.util.find_spec("keras") is None:
    pytest.skip("dropkit.keras needs the keras extra", allow_module_level=True)


def _interpreter(backend: str) -> str:
    if backend in ("torch", "numpy"):
        return sys.executable
    module = {"jax": "jax", "tensorflow": "tensorflow"}[backend]
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    if backend == "tensorflow" and os.environ.get("DROPKIT_KERAS_TF_PYTHON"):
        return os.environ["DROPKIT_KERAS_TF_PYTHON"]
    pytest.skip(f"{module} is not installed (set DROPKIT_KERAS_TF_PYTHON for TensorFlow)")


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow", "numpy"])
def test_backend(backend):
    python = _interpreter(backend)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


def test_import_dropkit_does_not_import_keras():
    code = "import sys, dropkit; print('keras' in sys.modules, 'jax' in sys.modules)"
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
