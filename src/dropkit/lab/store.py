"""The run store: one small interface, an SQLite backend.

What it keeps: experiments (name, task, the exact config), runs (one per
grid point or trial, with its exact :class:`~dropkit.lab.config.RunConfig`),
per-epoch metrics, the latest checkpoint of each unfinished run, who is
training each unfinished run (its claim), final measurements and artefact
paths.

Crash safety: each epoch's metrics and that epoch's checkpoint are written in
ONE transaction, so after a kill at any moment the newest checkpoint and the
newest epoch row always agree. A resumed run continues after its last
recorded epoch; no epoch is lost or written twice. Finishing a run (status,
measurements, artefacts, dropping the checkpoint and the claim) is one
transaction too.

Several writers: a process trains a run only after :meth:`SQLiteStore.claim_run`
recorded it as the run's claimant (host, pid, process start time, heartbeat)
in one ``BEGIN IMMEDIATE`` transaction. A claim held by a live process on
this host is never taken; a claim is stale, and taken over, when its process
is gone from this host, or, for a claimant on another machine (whose process
this host cannot see), when its heartbeat is older than ``stale_after`` seconds.
Every epoch row and the finish are written only while the writer still holds
the claim (checked in the same transaction), so a writer that lost its claim
can never add to a run someone else continues.

Read-only commands open the file with ``mode=ro`` (:func:`open_store`
``read_only=True``): they work on a store the user may not write and never
change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol
from urllib.parse import quote

if TYPE_CHECKING:  # torch is only needed to save a model
    from torch import nn

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER_SECONDS",
    "Claim",
    "ClaimLostError",
    "Claimant",
    "ConfigConflictError",
    "ExperimentRecord",
    "HeldRun",
    "RunRecord",
    "RunStore",
    "SQLiteStore",
    "StoreError",
    "artefacts_root",
    "default_store_path",
    "open_store",
    "save_model",
    "set_default_mode",
    "snapshot_path",
]

#: Schema version in ``PRAGMA user_version``. 0: before claims (stores written by
#: dropkit <= 0.1.0 before issue 12); 1: the ``claims`` table. Opening a version-0
#: store for writing adds the table (nothing else changes); readers need neither.
SCHEMA_VERSION = 1

#: How often a training process refreshes its claim's heartbeat (seconds).
HEARTBEAT_SECONDS = 15.0
#: A claim whose heartbeat is older than this is taken over even if its process
#: may live on another machine. Long against the heartbeat, so a busy machine
#: or a slow network file system does not lose a live claim.
STALE_AFTER_SECONDS = 120.0

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
CREATE TABLE IF NOT EXISTS claims (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT,
    claimed REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""


class StoreError(ValueError):
    """The run store cannot be opened or written; the message names the file and why."""


class ConfigConflictError(ValueError):
    """An existing experiment or run was recorded with a different config."""


class ClaimLostError(RuntimeError):
    """This process no longer holds the run it is writing (its claim was taken over)."""


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


def _process_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), so a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); split after the ")" closing the command name, which may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Claimant:
    """Who trains a run: host name, process id and that process's start time."""

    host: str
    pid: int
    started: Optional[str] = None

    @classmethod
    def current(cls) -> Claimant:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()))

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    def alive_here(self) -> Optional[bool]:
        """Whether the process still runs: ``None`` when it is on another host (unknowable)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        if self.started is not None and _process_start(self.pid) not in (None, self.started):
            return False  # the pid was reused by a newer process
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in ("Z", "X")  # a killed child its parent has not reaped yet


@dataclass(frozen=True)
class Claim:
    """A run this process may now train, and where to resume it."""

    run_id: int
    claimant: Claimant
    #: ``(epoch, state)`` of the newest checkpoint, or ``None``: start from epoch 1.
    checkpoint: Optional[tuple[int, bytes]]
    #: The dead or silent claimant this claim replaced (its label and why), if any.
    took_over: Optional[str] = None


@dataclass(frozen=True)
class HeldRun:
    """A run another live process is training."""

    run_id: int
    claimant: Claimant
    heartbeat_age: float


class RunStore(Protocol):
    """What the lab needs from persistence; a new backend implements these methods."""

    def ensure_experiment(self, name: str, task: str, config: dict) -> ExperimentRecord: ...
    def get_experiment(self, name: str) -> Optional[ExperimentRecord]: ...
    def experiments(self) -> list[ExperimentRecord]: ...
    def ensure_run(self, experiment_id: int, key: str, config: dict) -> RunRecord: ...
    def runs(self, experiment_id: int) -> list[RunRecord]: ...
    def run(self, run_id: int) -> RunRecord: ...
    def claim_run(self, run_id: int, claimant: Claimant) -> Claim | HeldRun | None: ...
    def holder(self, run_id: int) -> Optional[HeldRun]: ...
    def heartbeat(self, claim: Claim) -> contextlib.AbstractContextManager: ...
    def release(self, claim: Claim) -> None: ...
    def log_epoch(self, run_id: int, epoch: int, metrics: dict, checkpoint: bytes,
                  claimant: Optional[Claimant] = None) -> None: ...
    def epochs(self, run_id: int) -> list[dict]: ...
    def checkpoint(self, run_id: int) -> Optional[tuple[int, bytes]]: ...
    def finish_run(self, run_id: int, measurements: dict, artefacts: dict[str, str],
                   claimant: Optional[Claimant] = None) -> None: ...
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


def _why(path: Path, error: BaseException, writing: bool) -> str:
    """A one-line reason a store could not be opened, naming the file."""
    text = str(error)
    if "file is not a database" in text:
        return f"{str(path)!r} is not an SQLite database, so not a dropkit run store ({text})"
    if writing and ("readonly" in text or "read-only" in text):
        return (f"cannot write the run store {str(path)!r}: the file (or its folder) is "
                f"read-only ({text}); pass --store with a writable path")
    if writing and "unable to open" in text:
        return (f"cannot write the run store {str(path)!r}: its folder is not writable or "
                f"does not exist ({text})")
    if isinstance(error, OSError):
        return f"cannot use the run store {str(path)!r}: {error.strerror or error}"
    return f"cannot {'write' if writing else 'read'} the run store {str(path)!r}: {text}"


class SQLiteStore:
    """:class:`RunStore` on one SQLite file (WAL journal; each write is one transaction).

    ``read_only=True`` opens it with ``mode=ro``: every read works, any write
    raises, and nothing (not even the schema) is created or migrated.
    """

    def __init__(self, path: Path | str, *, read_only: bool = False,
                 stale_after: float = STALE_AFTER_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.path = Path(path)
        self.read_only = read_only
        self.stale_after = stale_after
        self.heartbeat_seconds = heartbeat_seconds
        #: The schema version this store had before this process opened it.
        self.migrated_from: Optional[int] = None
        try:
            self._conn = self._connect(writing=not read_only)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(_why(self.path, error, not read_only)) from None

    def _connect(self, writing: bool) -> sqlite3.Connection:
        if not writing:
            if not self.path.is_file():
                raise StoreError(f"no run store at {str(self.path)!r}")
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every write below opens its own BEGIN IMMEDIATE, so a
            # read-then-write (a claim) cannot interleave with another writer's.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if tables and "experiments" not in tables:
                raise StoreError(
                    f"{str(self.path)!r} is an SQLite database but not a dropkit run store "
                    f"(it has tables {sorted(tables)[:5]}, no 'experiments'); pass another "
                    "--store"
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"run store {str(self.path)!r} has schema version {version}, newer than "
                    f"this dropkit's {SCHEMA_VERSION}; upgrade dropkit to use it"
                )
            if not writing:
                if not tables:
                    raise StoreError(f"{str(self.path)!r} is an empty file, not a run store")
                return conn
            # WAL lets `dropkit lab show`/`report` read while a run writes. With WAL,
            # synchronous=NORMAL keeps every commit across a killed process (only a power
            # cut can drop the newest ones) and skips an fsync per epoch.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            if version < SCHEMA_VERSION:
                # Every statement is IF NOT EXISTS, so two writers migrating at once agree.
                with _transaction(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                if tables:
                    self.migrated_from = version
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(f"run store {str(self.path)!r} was opened read-only")
        try:
            with _transaction(self._conn):
                yield self._conn
        except sqlite3.OperationalError as error:
            if "readonly" in str(error) or "read-only" in str(error):
                raise StoreError(_why(self.path, error, True)) from None
            raise

    # experiments -------------------------------------------------------------

    def ensure_experiment(self, name: str, task: str, config: dict) -> ExperimentRecord:
        """Create experiment ``name`` or return the existing one if its task matches.

        One transaction: two writers creating the same experiment get the same record.
        """
        with self._write() as conn:
            existing = self.get_experiment(name)
            if existing is None:
                conn.execute(
                    "INSERT INTO experiments (name, task, config, created) VALUES (?, ?, ?, ?)",
                    (name, task, _canonical(config), time.time()),
                )
            elif existing.task != task:
                raise ConfigConflictError(
                    f"experiment {name!r} exists for task {existing.task!r}, not {task!r}; "
                    "choose another --name"
                )
            elif existing.config != config:
                # The grid may grow (more rates/seeds): keep the latest invocation's config.
                # Each run keeps its own exact config, which is what must never change.
                conn.execute(
                    "UPDATE experiments SET config = ? WHERE id = ?",
                    (_canonical(config), existing.id),
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
        row = self._get_run(experiment_id, key)
        if row is None:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO runs (experiment_id, key, variant, p, seed, config,"
                    " status, created) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        experiment_id, key, config["variant"], config["p"], config["seed"],
                        _canonical(config), time.time(),
                    ),
                )
            row = self._get_run(experiment_id, key)
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

    def _get_run(self, experiment_id: int, key: str) -> Optional[sqlite3.Row]:
        return self._conn.execute(
            "SELECT * FROM runs WHERE experiment_id = ? AND key = ?", (experiment_id, key)
        ).fetchone()

    def runs(self, experiment_id: int) -> list[RunRecord]:
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE experiment_id = ? ORDER BY variant, p, seed",
            (experiment_id,),
        ).fetchall()
        return [self._run(row) for row in rows]

    def run(self, run_id: int) -> RunRecord:
        return self._run(self._conn.execute("SELECT * FROM runs WHERE id = ?",
                                            (run_id,)).fetchone())

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            row["id"], row["experiment_id"], row["key"], row["variant"], row["p"], row["seed"],
            json.loads(row["config"]), row["status"],
        )

    # claims -----------------------------------------------------------------

    def _claim_row(self, run_id: int) -> Optional[sqlite3.Row]:
        try:
            return self._conn.execute("SELECT * FROM claims WHERE run_id = ?",
                                      (run_id,)).fetchone()
        except sqlite3.OperationalError:  # a version-0 store opened read-only: no claims
            return None

    def _stale(self, row: sqlite3.Row, now: float) -> Optional[str]:
        """Why the claim in ``row`` may be taken over, or ``None`` while its holder lives."""
        holder = Claimant(row["host"], row["pid"], row["started"])
        alive = holder.alive_here()
        if alive is False:
            return f"{holder.label} is no longer running"
        if alive:
            return None  # a live process on this host: never taken, however slow
        age = now - row["heartbeat"]
        if age > self.stale_after:
            return f"{holder.label} sent no heartbeat for {age:.0f} s"
        return None

    def holder(self, run_id: int) -> Optional[HeldRun]:
        """The live claimant of an unfinished run, or ``None`` (unclaimed or stale)."""
        row = self._claim_row(run_id)
        now = time.time()
        if row is None or self._stale(row, now) is not None:
            return None
        return HeldRun(run_id, Claimant(row["host"], row["pid"], row["started"]),
                       now - row["heartbeat"])

    def claim_run(self, run_id: int, claimant: Claimant) -> Claim | HeldRun | None:
        """Become the one process that trains ``run_id``, atomically.

        Returns a :class:`Claim` (with the checkpoint to resume from), a
        :class:`HeldRun` when a live process trains it, or ``None`` when it is
        finished. A checkpoint that disagrees with the epoch rows (which a
        transactional store never produces) is dropped with the rows, in the same
        transaction, so the run starts over cleanly.
        """
        with self._write() as conn:
            status = conn.execute("SELECT status FROM runs WHERE id = ?",
                                  (run_id,)).fetchone()["status"]
            if status == "finished":
                return None
            now = time.time()
            row = self._claim_row(run_id)
            took_over = None
            if row is not None and (row["host"], row["pid"]) != (claimant.host, claimant.pid):
                reason = self._stale(row, now)
                if reason is None:
                    return HeldRun(run_id, Claimant(row["host"], row["pid"], row["started"]),
                                   now - row["heartbeat"])
                took_over = reason
            conn.execute(
                "INSERT OR REPLACE INTO claims (run_id, host, pid, started, claimed, heartbeat)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, claimant.host, claimant.pid, claimant.started, now, now),
            )
            saved = self.checkpoint(run_id)
            done = conn.execute("SELECT COUNT(*) FROM epochs WHERE run_id = ?",
                                (run_id,)).fetchone()[0]
            if saved is None or saved[0] != done:
                conn.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
                saved = None
        return Claim(run_id, claimant, saved, took_over)

    def _check_claim(self, conn: sqlite3.Connection, run_id: int,
                     claimant: Optional[Claimant]) -> None:
        if claimant is None:
            return
        row = conn.execute("SELECT host, pid FROM claims WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or (row["host"], row["pid"]) != (claimant.host, claimant.pid):
            holder = "nobody" if row is None else f"{row['host']}:{row['pid']}"
            raise ClaimLostError(
                f"run {run_id} is no longer claimed by {claimant.label} (now: {holder}); "
                "this process stops writing it"
            )
        conn.execute("UPDATE claims SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id))

    def release(self, claim: Claim) -> None:
        """Give up an unfinished run (an error or Ctrl-C): the next writer may take it at once."""
        with self._write() as conn:
            conn.execute("DELETE FROM claims WHERE run_id = ? AND host = ? AND pid = ?",
                         (claim.run_id, claim.claimant.host, claim.claimant.pid))

    @contextlib.contextmanager
    def heartbeat(self, claim: Claim) -> Iterator[None]:
        """Refresh ``claim``'s heartbeat from a thread while the body trains or measures.

        The thread has its own connection (sqlite3 connections stay in their thread);
        an epoch longer than ``stale_after`` therefore keeps its claim.
        """
        stop = threading.Event()

        def beat() -> None:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                while not stop.wait(self.heartbeat_seconds):
                    with conn:
                        conn.execute(
                            "UPDATE claims SET heartbeat = ? WHERE run_id = ? AND host = ? "
                            "AND pid = ?", (time.time(), claim.run_id, claim.claimant.host,
                                            claim.claimant.pid))
            except sqlite3.Error:
                pass  # the main thread's next write reports a lost or broken store
            finally:
                conn.close()

        thread = threading.Thread(target=beat, name=f"dropkit-heartbeat-{claim.run_id}",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # epochs and checkpoints ---------------------------------------------------

    def log_epoch(self, run_id: int, epoch: int, metrics: dict, checkpoint: bytes,
                  claimant: Optional[Claimant] = None) -> None:
        """Record one finished epoch and its checkpoint atomically (only while ``claimant``
        still holds the run, when given)."""
        with self._write() as conn:
            self._check_claim(conn, run_id, claimant)
            conn.execute(
                "INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                (run_id, epoch, json.dumps(metrics)),
            )
            conn.execute(
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

    # results ----------------------------------------------------------------

    def finish_run(self, run_id: int, measurements: dict, artefacts: dict[str, str],
                   claimant: Optional[Claimant] = None) -> None:
        """Mark a run finished with its measurements and artefact paths, in one transaction."""
        with self._write() as conn:
            self._check_claim(conn, run_id, claimant)
            conn.executemany(
                "INSERT OR REPLACE INTO measurements (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, name, json.dumps(value)) for name, value in measurements.items()],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO artefacts (run_id, name, path) VALUES (?, ?, ?)",
                [(run_id, name, str(path)) for name, path in artefacts.items()],
            )
            conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM claims WHERE run_id = ?", (run_id,))
            conn.execute(
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
        return artefacts_root(self) / f"run-{run_id}"

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock at BEGIN: a read inside the transaction can then
    # never be overtaken by another writer (a deferred BEGIN would fail with
    # SQLITE_BUSY when upgrading from read to write in WAL mode).
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def artefacts_root(store: SQLiteStore) -> Path:
    """The folder beside the database that holds model files and sweep snapshots."""
    return store.path.with_name(store.path.stem + "-artefacts")


def snapshot_path(store: SQLiteStore, experiment: ExperimentRecord) -> Path:
    """Where an Optuna study's latest snapshot lies (written by the sweep, read by the report)."""
    return artefacts_root(store) / f"sweep-{experiment.id}.json"


def _umask() -> int:
    # /proc says it without changing it; os.umask can only read it by setting it, which
    # for an instant gives every other thread's new files the mask 0.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_default_mode(path: Path | str) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would: 0666 less the umask.

    The lab writes files atomically (a :func:`tempfile.mkstemp` file, then a rename),
    and mkstemp creates them 0600 whatever the umask, so a model or a report would be
    unreadable to the group the user shares results with. Every such file (the saved
    ``model.pt``, the HTML report) gets its mode here.
    """
    os.chmod(path, 0o666 & ~_umask())


def save_model(model: nn.Module, directory: Path) -> Path:
    """``directory/model.pt`` with the model's state dict; never a truncated file.

    Its mode is 0666 less the umask (:func:`set_default_mode`).
    """
    import torch

    # Write then rename, so a kill never leaves a truncated model file behind.
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "model.pt"
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    torch.save(model.state_dict(), temporary)
    set_default_mode(temporary)  # before the rename: the visible file never has 0600
    os.replace(temporary, target)
    return target


def open_store(path: Optional[Path | str] = None, *, read_only: bool = False,
               **options: Any) -> SQLiteStore:
    """Open the store at ``path`` or at :func:`default_store_path`.

    For writing (the default) the file is created if needed; ``read_only=True``
    needs an existing store and never changes it. Errors are :class:`StoreError`
    naming the file and the reason.
    """
    return SQLiteStore(default_store_path() if path is None else path, read_only=read_only,
                       **options)
