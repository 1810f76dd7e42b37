"""Fixtures of the lab tests: a tiny experiment, small enough to train in a second or two."""

from __future__ import annotations

import pytest

from dropkit.lab.config import build_config
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store

TINY = {"epochs": 3, "seeds": [0, 1], "rates": [0.0, 0.5], "mc_samples": 3}


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store" / "lab.sqlite"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A store holding one finished breast-cancer experiment named with HTML/markup characters."""
    path = tmp_path_factory.mktemp("tiny") / "lab.sqlite"
    config = build_config("breast-cancer", name="<script>alert('x')</script> & [bold]", **TINY)
    with open_store(path) as store:
        run_experiment(store, config, show_progress=False)
    return path, config.name
