"""scikit-learn's bundled 8x8 digits with a small CNN (offline; the default demo task)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dropkit.lab.tasks import (
    Task,
    TaskData,
    make_dropout,
    register,
    split_indices,
    with_validation,
)


class DigitsCNN(nn.Module):
    """conv-BN-ReLU, channel dropout, conv-BN-ReLU, pool, then a dropout-regularised dense head.

    Dropout sits where practitioners put it in a small CNN: channel dropout
    between convolution blocks and element-wise dropout before each dense
    layer. The second BatchNorm follows a dropout layer on purpose: it is
    the placement whose train/test variance shift (Li et al., 2019) the
    report measures.
    """

    def __init__(self, p: float, variant: str = "standard", width: int = 16, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            make_dropout(variant, p, "conv2d"),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(
            make_dropout(variant, p, "dense"),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            make_dropout(variant, p, "dense"),
        )
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.features(x)))


class Digits(Task):
    name = "digits"
    description = (
        "scikit-learn's 1797 8x8 handwritten digits, 300 for training (small, so a CNN "
        "overfits visibly; 60 of them held out for validation), the rest for testing; CNN "
        "with channel and dense dropout."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1, 2],
        "epochs": 40,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.0,
    }
    train_size = 300

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(digits.target, dtype=torch.int64)
        test_fraction = 1 - self.train_size / len(y)
        # The split is fixed (not per seed) so seeds vary only initialisation and masks.
        train, test = split_indices(len(y), test_fraction, seed=0, stratify=y)
        return with_validation(
            TaskData(x[train], y[train], x[test], y[test]), self.validation_fraction,
            stratify=True,
        )

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return DigitsCNN(p, variant)


register(Digits())
