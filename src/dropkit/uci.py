"""Alias kept for ``python -m dropkit.uci`` and ``dropkit.uci.<name>``: the UCI benchmark is lab
code and lives in :mod:`dropkit.lab.uci` (``dropkit lab uci`` is the same command)."""

from dropkit.lab.uci import *  # noqa: F403 - the alias re-exports the benchmark's API
from dropkit.lab.uci import __all__  # noqa: F401

if __name__ == "__main__":
    from dropkit.lab.uci import main

    raise SystemExit(main(prog="python -m dropkit.uci"))
