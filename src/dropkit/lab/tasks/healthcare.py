"""Healthcare tasks on scikit-learn's bundled tables: breast-cancer and diabetes.

Both report MC-dropout uncertainty (Gal & Ghahramani, 2016): referral of the
most uncertain patients (selective prediction) and predictive intervals.

One row is one patient in both tables (569 breast-cancer patients, 442 diabetes
patients; no patient has two rows), so a split of rows is a split of patients:
the test rows are patients the model never saw, and the explainer's "improves
generalization across patients" is judged on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dropkit.lab.tasks import Task, TaskData, register, split_indices, with_validation
from dropkit.lab.tasks.mnist1d import MLP


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Statistics from the training rows only, so no test information leaks in.
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


class _PatientTask(Task):
    application_claim = (
        "Dropout improves generalization across patients",
        "patients held out of training (one row = one patient)",
    )
    uncertainty = True

    def _patients(self, x_train, y_train, x_test, y_test, total: int, **options) -> TaskData:
        data = with_validation(
            TaskData(x_train, y_train, x_test, y_test, **options), self.validation_fraction,
            stratify=self.kind == "classification",
        )
        data.notes.insert(0, (
            f"one row = one patient ({total} patients): {len(y_train)} for training (of which "
            f"{len(data.y_val)} validate), {len(y_test)} held-out test patients"
        ))
        return data


class BreastCancer(_PatientTask):
    name = "breast-cancer"
    description = (
        "Wisconsin breast-cancer diagnosis (569 patients, one row each; 30 features, "
        "scikit-learn bundled), 60/40 stratified split of patients, 20% of the training "
        "patients validate; MLP 30-64-64-2 with dropout; MC uncertainty and referral."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1, 2],
        "epochs": 60,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from sklearn.datasets import load_breast_cancer

        table = load_breast_cancer()
        x = torch.tensor(table.data, dtype=torch.float32)
        y = torch.tensor(table.target, dtype=torch.int64)
        train, test = split_indices(len(y), 0.4, seed=0, stratify=y)
        x_train, x_test = _standardise(x[train], x[test])
        return self._patients(x_train, y[train], x_test, y[test], len(y))

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return MLP(30, p, variant, hidden=64, classes=2)


class Diabetes(_PatientTask):
    name = "diabetes"
    kind = "regression"
    metric = "rmse"
    description = (
        "Diabetes disease progression after one year (442 patients, one row each; 10 "
        "features, scikit-learn bundled), 70/30 split of patients, 20% of the training "
        "patients validate; MLP 10-64-64-1 with dropout; RMSE and MC predictive intervals."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1, 2],
        "epochs": 80,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from sklearn.datasets import load_diabetes

        table = load_diabetes()
        x = torch.tensor(table.data, dtype=torch.float32)
        y = torch.tensor(table.target, dtype=torch.float32)
        train, test = split_indices(len(y), 0.3, seed=0)
        x_train, x_test = _standardise(x[train], x[test])
        y_mean, y_std = y[train].mean(), y[train].std()
        return self._patients(
            x_train, (y[train] - y_mean) / y_std, x_test, (y[test] - y_mean) / y_std, len(y),
            y_scale=float(y_std),
        )

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return MLP(10, p, variant, hidden=64, classes=1)


register(BreastCancer())
register(Diabetes())
