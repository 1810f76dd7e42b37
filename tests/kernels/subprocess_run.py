"""A fresh interpreter for the tests of settings read once at import (``DROPKIT_*``)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` with every warning shown and only the ``DROPKIT_*`` variables in ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
