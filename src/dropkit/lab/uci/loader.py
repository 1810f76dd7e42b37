"""Read a UCI benchmark folder: the data matrix, its fixed splits and the reference grids.

Data layout (``uci/`` of the shared data, or any folder like it): one folder per
data set holding ``data.txt``, ``index_features.txt``, ``index_target.txt``,
``index_train_<k>.txt``, ``index_test_<k>.txt``, ``n_splits.txt``,
``n_hidden.txt``, ``n_epochs.txt``, ``dropout_rates.txt``, ``tau_values.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["DATASETS", "UCIDataset", "default_uci_root", "load_uci"]

#: The nine data sets of the paper, smallest first so a partial run covers many.
DATASETS = (
    "yacht",
    "bostonHousing",
    "energy",
    "concrete",
    "wine-quality-red",
    "kin8nm",
    "power-plant",
    "naval-propulsion-plant",
    "protein-tertiary-structure",
)

_REQUIRED_FILES = (
    "data.txt",
    "index_features.txt",
    "index_target.txt",
    "n_splits.txt",
    "n_hidden.txt",
    "n_epochs.txt",
    "dropout_rates.txt",
    "tau_values.txt",
)


def default_uci_root() -> Path:
    """Where the UCI folders are looked for when no folder is given (first that is set):

    ``$DROPKIT_UCI_DIR``; ``$DROPKIT_SHARED_DATA/uci`` (the shared data of the
    tests); ``$DROPKIT_DATA/uci`` (the lab's data folder); else ``uci`` in the
    lab's data cache (:func:`dropkit.lab.datasets._common.default_cache_dir`).
    Never a path derived from where the package is installed.
    """
    for variable, sub in (("DROPKIT_UCI_DIR", ""), ("DROPKIT_SHARED_DATA", "uci"),
                          ("DROPKIT_DATA", "uci")):
        value = os.environ.get(variable)
        if value:
            return Path(value) / sub if sub else Path(value)
    from dropkit.lab.datasets._common import default_cache_dir

    return default_cache_dir() / "uci"


@dataclass(frozen=True)
class UCIDataset:
    """One UCI regression data set with its fixed splits and the reference grids."""

    name: str
    path: Path
    features: np.ndarray
    target: np.ndarray
    n_splits: int
    n_hidden: int
    n_epochs: int
    dropout_rates: tuple[float, ...]
    tau_values: tuple[float, ...]

    def split(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``(train, test)`` of split ``k`` (as stored, in file order)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n_splits:
            raise ValueError(
                f"{self.name} has splits 0..{self.n_splits - 1}, but split {k!r} was asked for"
            )
        train = _read_indices(self.path / f"index_train_{k}.txt", len(self.target))
        test = _read_indices(self.path / f"index_test_{k}.txt", len(self.target))
        if np.intersect1d(train, test).size:
            raise ValueError(f"{self.path}: split {k} has rows in both train and test")
        return train, test


def _read_indices(path: Path, rows: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing split file {path}")
    indices = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    if indices.size == 0 or not np.all(indices == np.round(indices)):
        raise ValueError(f"{path} must hold integer row indices, one per line")
    indices = indices.astype(np.int64)
    if indices.min() < 0 or indices.max() >= rows:
        raise ValueError(
            f"{path} indexes row {int(indices.max() if indices.max() >= rows else indices.min())}"
            f" but data.txt has rows 0..{rows - 1}"
        )
    return indices


def _read_scalar(path: Path) -> int:
    value = float(np.loadtxt(path))
    if value != int(value) or value < 1:
        raise ValueError(f"{path} must hold one positive integer, but holds {value}")
    return int(value)


def _read_grid(path: Path) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.loadtxt(path)))
    if not values:
        raise ValueError(f"{path} is empty; it must list one value per line")
    return values


def load_uci(name: str, root: Optional[os.PathLike | str] = None) -> UCIDataset:
    """Load data set ``name`` from ``root`` (default :func:`default_uci_root`).

    ``root/name`` must follow the layout in the module docstring; missing files,
    indices out of range and bad grids raise with the file named.

    Example::

        >>> ds = load_uci("yacht")
        >>> train, test = ds.split(0)
        >>> ds.features[train].shape
        (277, 6)
    """
    base = Path(root) if root is not None else default_uci_root()
    path = base / name
    if not path.is_dir():
        available = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise FileNotFoundError(
            f"no UCI data set {name!r} under {base} (found: {', '.join(available) or 'nothing'})"
        )
    missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}")
    data = np.atleast_2d(np.loadtxt(path / "data.txt", dtype=np.float64))
    columns = data.shape[1]
    feature_columns = np.atleast_1d(np.loadtxt(path / "index_features.txt")).astype(np.int64)
    target_column = np.atleast_1d(np.loadtxt(path / "index_target.txt")).astype(np.int64)
    if target_column.size != 1:
        raise ValueError(f"{path / 'index_target.txt'} must name exactly one target column")
    used = np.concatenate([feature_columns, target_column])
    if used.min() < 0 or used.max() >= columns:
        raise ValueError(f"{path}: column index {int(used.max())} but data.txt has {columns}")
    dataset = UCIDataset(
        name=name,
        path=path,
        features=data[:, feature_columns],
        target=data[:, int(target_column[0])],
        n_splits=_read_scalar(path / "n_splits.txt"),
        n_hidden=_read_scalar(path / "n_hidden.txt"),
        n_epochs=_read_scalar(path / "n_epochs.txt"),
        dropout_rates=_read_grid(path / "dropout_rates.txt"),
        tau_values=_read_grid(path / "tau_values.txt"),
    )
    bad_rate = [p for p in dataset.dropout_rates if not 0.0 <= p < 1.0]
    if bad_rate:
        raise ValueError(
            f"{path / 'dropout_rates.txt'}: rates must be in [0, 1), got {bad_rate[0]}"
        )
    bad_tau = [t for t in dataset.tau_values if not t > 0]
    if bad_tau:
        raise ValueError(f"{path / 'tau_values.txt'}: tau must be > 0, got {bad_tau[0]}")
    return dataset


