"""Healthcare tasks on scikit-learn's bundled tables: breast-cancer and diabetes.

Both report MC-dropout uncertainty (Gal & Ghahramani, 2016): referral of the
most uncertain patients (selective prediction) and predictive intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dropkit.lab.tasks import Task, TaskData, register, split_indices
from dropkit.lab.tasks.mnist1d import MLP


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Statistics from the training rows only, so no test information leaks in.
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


class BreastCancer(Task):
    name = "breast-cancer"
    description = (
        "Wisconsin breast-cancer diagnosis (569 patients, 30 features, scikit-learn bundled), "
        "60/40 stratified split; MLP 30-64-64-2 with dropout; MC uncertainty and referral."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1],
        "epochs": 60,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }
    uncertainty = True

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from sklearn.datasets import load_breast_cancer

        table = load_breast_cancer()
        x = torch.tensor(table.data, dtype=torch.float32)
        y = torch.tensor(table.target, dtype=torch.int64)
        train, test = split_indices(len(y), 0.4, seed=0, stratify=y)
        x_train, x_test = _standardise(x[train], x[test])
        return TaskData(x_train, y[train], x_test, y[test])

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return MLP(30, p, variant, hidden=64, classes=2)


class Diabetes(Task):
    name = "diabetes"
    kind = "regression"
    metric = "rmse"
    description = (
        "Diabetes disease progression after one year (442 patients, 10 features, scikit-learn "
        "bundled), 70/30 split; MLP 10-64-64-1 with dropout; RMSE and MC predictive intervals."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1],
        "epochs": 80,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }
    uncertainty = True

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from sklearn.datasets import load_diabetes

        table = load_diabetes()
        x = torch.tensor(table.data, dtype=torch.float32)
        y = torch.tensor(table.target, dtype=torch.float32)
        train, test = split_indices(len(y), 0.3, seed=0)
        x_train, x_test = _standardise(x[train], x[test])
        y_mean, y_std = y[train].mean(), y[train].std()
        return TaskData(
            x_train, (y[train] - y_mean) / y_std, x_test, (y[test] - y_mean) / y_std,
            y_scale=float(y_std),
        )

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return MLP(10, p, variant, hidden=64, classes=1)


register(BreastCancer())
register(Diabetes())
