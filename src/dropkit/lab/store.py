"""The run store: one small interface, an SQLite backend.

What it keeps: experiments (name, task, the exact config), runs (one per
variant x rate x seed, with its exact :class:`~dropkit.lab.train.RunConfig`),
per-epoch metrics, the latest checkpoint of each unfinished run, final
measurements and artefact paths.

Crash safety: each epoch's metrics and that epoch's checkpoint are written in
ONE transaction, so after a kill at any moment the newest checkpoint and the
newest epoch row always agree. A resumed run continues after its last
recorded epoch; no epoch is lost or written twice. Finishing a run (status,
measurements, artefacts, dropping the checkpoint) is one transaction too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

__all__ = [
    "ConfigConflictError",
    "ExperimentRecord",
    "RunRecord",
    "RunStore",
    "SQLiteStore",
    "default_store_path",
    "open_store",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    key TEXT NOT NULL,
    variant TEXT NOT NULL,
    p REAL NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'finished')),
    created REAL NOT NULL,
    finished REAL,
    UNIQUE (experiment_id, key)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS artefacts (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


class ConfigConflictError(ValueError):
    """An existing experiment or run was recorded with a different config."""


@dataclass(frozen=True)
class ExperimentRecord:
    id: int
    name: str
    task: str
    config: dict
    created: float


@dataclass(frozen=True)
class RunRecord:
    id: int
    experiment_id: int
    key: str
    variant: str
    p: float
    seed: int
    config: dict
    status: str


class RunStore(Protocol):
    """What the lab needs from persistence; a new backend implements these methods."""

    def ensure_experiment(self, name: str, task: str, config: dict) -> ExperimentRecord: ...
    def get_experiment(self, name: str) -> Optional[ExperimentRecord]: ...
    def experiments(self) -> list[ExperimentRecord]: ...
    def ensure_run(self, experiment_id: int, key: str, config: dict) -> RunRecord: ...
    def runs(self, experiment_id: int) -> list[RunRecord]: ...
    def log_epoch(self, run_id: int, epoch: int, metrics: dict, checkpoint: bytes) -> None: ...
    def epochs(self, run_id: int) -> list[dict]: ...
    def checkpoint(self, run_id: int) -> Optional[tuple[int, bytes]]: ...
    def restart_run(self, run_id: int) -> None: ...
    def finish_run(self, run_id: int, measurements: dict, artefacts: dict[str, str]) -> None: ...
    def measurements(self, run_id: int) -> dict: ...
    def artefacts(self, run_id: int) -> dict[str, str]: ...
    def artefact_dir(self, run_id: int) -> Path: ...
    def close(self) -> None: ...


def default_store_path() -> Path:
    """``$DROPKIT_HOME/lab.sqlite`` if set, else the platform's user data dir for dropkit."""
    home = os.environ.get("DROPKIT_HOME")
    if home:
        return Path(home) / "lab.sqlite"
    from platformdirs import user_data_path

    return user_data_path("dropkit", appauthor=False) / "lab.sqlite"


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


class SQLiteStore:
    """:class:`RunStore` on one SQLite file (WAL journal; each write is one transaction)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        # WAL lets `dropkit lab show`/`report` read while a run writes. With WAL,
        # synchronous=NORMAL keeps every commit across a killed process (only a power
        # cut can drop the newest ones) and skips an fsync per epoch.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._conn:
            self._conn.executescript(_SCHEMA)

    # experiments -------------------------------------------------------------

    def ensure_experiment(self, name: str, task: str, config: dict) -> ExperimentRecord:
        """Create experiment ``name`` or return the existing one if its task matches."""
        existing = self.get_experiment(name)
        if existing is not None:
            if existing.task != task:
                raise ConfigConflictError(
                    f"experiment {name!r} exists for task {existing.task!r}, not {task!r}; "
                    "choose another --name"
                )
            if existing.config != config:
                # The grid may grow (more rates/seeds): keep the latest invocation's config.
                # Each run keeps its own exact config, which is what must never change.
                with self._conn:
                    self._conn.execute(
                        "UPDATE experiments SET config = ? WHERE id = ?",
                        (_canonical(config), existing.id),
                    )
                existing = self.get_experiment(name)
            return existing
        with self._conn:
            self._conn.execute(
                "INSERT INTO experiments (name, task, config, created) VALUES (?, ?, ?, ?)",
                (name, task, _canonical(config), time.time()),
            )
        return self.get_experiment(name)

    def get_experiment(self, name: str) -> Optional[ExperimentRecord]:
        row = self._conn.execute("SELECT * FROM experiments WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._experiment(row)

    def experiments(self) -> list[ExperimentRecord]:
        rows = self._conn.execute("SELECT * FROM experiments ORDER BY id").fetchall()
        return [self._experiment(row) for row in rows]

    @staticmethod
    def _experiment(row: sqlite3.Row) -> ExperimentRecord:
        return ExperimentRecord(
            row["id"], row["name"], row["task"], json.loads(row["config"]), row["created"]
        )

    # runs -------------------------------------------------------------------

    def ensure_run(self, experiment_id: int, key: str, config: dict) -> RunRecord:
        """Create run ``key`` or return it; a changed config is an error, never an overwrite."""
        row = self._conn.execute(
            "SELECT * FROM runs WHERE experiment_id = ? AND key = ?", (experiment_id, key)
        ).fetchone()
        if row is None:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO runs (experiment_id, key, variant, p, seed, config, status,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        experiment_id, key, config["variant"], config["p"], config["seed"],
                        _canonical(config), time.time(),
                    ),
                )
            row = self._conn.execute(
                "SELECT * FROM runs WHERE experiment_id = ? AND key = ?", (experiment_id, key)
            ).fetchone()
        run = self._run(row)
        if run.config != json.loads(_canonical(config)):
            changed = sorted(
                k for k in set(run.config) | set(config) if run.config.get(k) != config.get(k)
            )
            details = ", ".join(
                f"{k}: stored {run.config.get(k)!r}, asked {config.get(k)!r}" for k in changed
            )
            raise ConfigConflictError(
                f"run {key!r} of this experiment was recorded with a different config "
                f"({details}); "
                "use a new experiment --name to train with the new settings"
            )
        return run

    def runs(self, experiment_id: int) -> list[RunRecord]:
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE experiment_id = ? ORDER BY variant, p, seed",
            (experiment_id,),
        ).fetchall()
        return [self._run(row) for row in rows]

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            row["id"], row["experiment_id"], row["key"], row["variant"], row["p"], row["seed"],
            json.loads(row["config"]), row["status"],
        )

    # epochs and checkpoints ---------------------------------------------------

    def log_epoch(self, run_id: int, epoch: int, metrics: dict, checkpoint: bytes) -> None:
        """Record one finished epoch and its checkpoint atomically."""
        with self._conn:
            self._conn.execute(
                "INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                (run_id, epoch, json.dumps(metrics)),
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, epoch, state) VALUES (?, ?, ?)",
                (run_id, epoch, checkpoint),
            )

    def epochs(self, run_id: int) -> list[dict]:
        rows = self._conn.execute(
            "SELECT epoch, metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
        ).fetchall()
        return [{"epoch": row["epoch"], **json.loads(row["metrics"])} for row in rows]

    def checkpoint(self, run_id: int) -> Optional[tuple[int, bytes]]:
        row = self._conn.execute(
            "SELECT epoch, state FROM checkpoints WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else (row["epoch"], bytes(row["state"]))

    def restart_run(self, run_id: int) -> None:
        """Forget a pending run's epochs and checkpoint so it starts over cleanly."""
        with self._conn:
            self._conn.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            self._conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))

    # results ----------------------------------------------------------------

    def finish_run(self, run_id: int, measurements: dict, artefacts: dict[str, str]) -> None:
        """Mark a run finished with its measurements and artefact paths, in one transaction."""
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO measurements (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, name, json.dumps(value)) for name, value in measurements.items()],
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO artefacts (run_id, name, path) VALUES (?, ?, ?)",
                [(run_id, name, str(path)) for name, path in artefacts.items()],
            )
            self._conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
            self._conn.execute(
                "UPDATE runs SET status = 'finished', finished = ? WHERE id = ?",
                (time.time(), run_id),
            )

    def measurements(self, run_id: int) -> dict:
        rows = self._conn.execute(
            "SELECT name, value FROM measurements WHERE run_id = ? ORDER BY name", (run_id,)
        ).fetchall()
        return {row["name"]: json.loads(row["value"]) for row in rows}

    def artefacts(self, run_id: int) -> dict[str, str]:
        rows = self._conn.execute(
            "SELECT name, path FROM artefacts WHERE run_id = ? ORDER BY name", (run_id,)
        ).fetchall()
        return {row["name"]: row["path"] for row in rows}

    def artefact_dir(self, run_id: int) -> Path:
        """Folder for a run's files, beside the database (named by id: names are user input)."""
        return self.path.with_name(self.path.stem + "-artefacts") / f"run-{run_id}"

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_store(path: Optional[Path | str] = None) -> SQLiteStore:
    """Open (creating if needed) the store at ``path`` or at :func:`default_store_path`."""
    return SQLiteStore(default_store_path() if path is None else path)
