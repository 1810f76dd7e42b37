"""Spoken digits: the Free Spoken Digit Dataset as log-mel spectrograms, with a small CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from dropkit.lab.datasets import DatasetNotFoundError, load_fsdd
from dropkit.lab.datasets import status as dataset_status
from dropkit.lab.tasks import DataStatus, MissingDataError, Task, TaskData, register
from dropkit.lab.tasks.images import ImageCNN

__all__ = ["speech_cnn"]


def speech_cnn(p: float, variant: str = "standard") -> nn.Module:
    """Two conv-ReLU-pool blocks over (mel, time), spatial (channel) dropout after each, then an
    average-pooled dense layer with dropout.

    Channel dropout on spectrogram feature maps (Tompson et al., 2015's
    SpatialDropout; ``Dropout2d`` here) drops whole filters: neighbouring
    time-frequency bins are strongly correlated, so element-wise masks would
    barely regularise. Shape: ``(N, 1, mels, frames)`` -> ``(N, 10)``.
    """
    # A fixed 4x4 grid whatever the spectrogram size keeps the dense layer small.
    return ImageCNN(p, variant, width=8, hidden=64, pool_to=(4, 4))


class Fsdd(Task):
    name = "fsdd"
    description = (
        "Free Spoken Digit Dataset (3000 8 kHz recordings, 6 speakers; official split: takes "
        "5-49 train, 0-4 test), 40x100 log-mel features; small CNN with channel dropout."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0],
        "epochs": 10,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.0,
    }

    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        present, message = dataset_status("fsdd", data_dir)
        hint = "" if present else (
            "Get the wav files with: git clone "
            "https://github.com/Jakobovski/free-spoken-digit-dataset and pass its folder "
            "(the one holding recordings/) as --data-dir"
        )
        return DataStatus(present, message, hint)

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            train, test = load_fsdd(data_dir, "train"), load_fsdd(data_dir, "test")
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error
        # One mean and scale over all training bins: log-mel values sit far from zero
        # (silence is log(floor)), which slows Adam's first epochs.
        mean, std = train.features.mean(), train.features.std().clamp_min(1e-8)
        return TaskData(
            ((train.features - mean) / std).unsqueeze(1), train.labels,
            ((test.features - mean) / std).unsqueeze(1), test.labels,
            notes=[f"train: {train.description}", f"test: {test.description}"],
        )

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return speech_cnn(p, variant)


register(Fsdd())
