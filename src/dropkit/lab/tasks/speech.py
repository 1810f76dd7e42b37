"""Spoken digits: the Free Spoken Digit Dataset as log-mel spectrograms, with a small CNN.

Two protocols. ``fsdd`` is the data set's official split by take (takes 0-4 test):
the same six speakers are in training and test, so it measures new recordings of
known voices. ``fsdd-speakers`` holds one speaker out (leave-one-speaker-out, one
fold per run seed), so its test set is a voice the model never heard: the one
that can judge the explainer's "helps model diverse speaking styles".
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dropkit.lab.datasets import DatasetNotFoundError, load_fsdd
from dropkit.lab.datasets import status as dataset_status
from dropkit.lab.tasks import (
    DataStatus,
    MissingDataError,
    Task,
    TaskData,
    register,
    with_validation,
)
from dropkit.lab.tasks.images import ImageCNN

__all__ = ["speech_cnn"]

_SPEECH_CLAIM = "Dropout helps model diverse speaking styles"


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


def _normalised(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    # One mean and scale over all training bins: log-mel values sit far from zero
    # (silence is log(floor)), which slows Adam's first epochs.
    mean, std = train.mean(), train.std().clamp_min(1e-8)
    return [((x - mean) / std).unsqueeze(1) for x in (train, *others)]


class _SpeechTask(Task):
    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        present, message = dataset_status("fsdd", data_dir)
        hint = "" if present else (
            "Get the wav files with: git clone "
            "https://github.com/Jakobovski/free-spoken-digit-dataset and pass its folder "
            "(the one holding recordings/) as --data-dir"
        )
        return DataStatus(present, message, hint)

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return speech_cnn(p, variant)


class Fsdd(_SpeechTask):
    name = "fsdd"
    description = (
        "Free Spoken Digit Dataset (3000 8 kHz recordings, 6 speakers; official split: takes "
        "5-49 train, 20% of them validate, 0-4 test: the test speakers are also training "
        "speakers), 40x100 log-mel features; small CNN with channel dropout."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1, 2],
        "epochs": 10,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.0,
    }
    application_claim = (_SPEECH_CLAIM, None)
    application_not_measured = (
        "this split tests new takes of the six training speakers, not unseen speakers; "
        "run task fsdd-speakers (leave one speaker out) for this claim"
    )

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            train, test = load_fsdd(data_dir, "train"), load_fsdd(data_dir, "test")
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error
        x_train, x_test = _normalised(train.features, test.features)
        return with_validation(TaskData(
            x_train, train.labels, x_test, test.labels,
            notes=[f"train: {train.description}", f"test: {test.description}"],
        ), self.validation_fraction, stratify=True)


@functools.lru_cache(maxsize=2)
def _all_recordings(data_dir: Optional[str]):
    # Every fold re-reads the same 3000 files; decoding and log-mel take seconds.
    return load_fsdd(None if data_dir is None else Path(data_dir), "all")


class FsddSpeakers(_SpeechTask):
    """Leave-one-speaker-out on FSDD: run seed ``s`` tests on speaker ``sorted(speakers)[s % 6]``.

    Seeds 0-5 are the six folds; a p=0 and a p>0 run with the same seed share the
    held-out speaker, so their per-seed difference is a per-speaker difference and
    the paired test over seeds is a test over unseen speakers.
    """

    name = "fsdd-speakers"
    description = (
        "Free Spoken Digit Dataset, leave one speaker out: run seed s trains on five speakers "
        "(all takes, 20% of them validate) and tests on all 500 recordings of the sixth "
        "(speaker s mod 6, sorted by name); 40x100 log-mel features; small CNN with channel "
        "dropout."
    )
    defaults = {
        "rates": [0.0, 0.2, 0.5],
        "seeds": [0, 1, 2, 3, 4, 5],
        "epochs": 10,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.0,
    }
    data_per_seed = True
    application_claim = (_SPEECH_CLAIM, "recordings of a speaker held out of training")

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            every = _all_recordings(None if data_dir is None else str(data_dir))
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error
        speakers = sorted(set(every.speakers))
        held_out = speakers[seed % len(speakers)]
        test = torch.tensor([s == held_out for s in every.speakers])
        x_train, x_test = _normalised(every.features[~test], every.features[test])
        data = with_validation(TaskData(
            x_train, every.labels[~test], x_test, every.labels[test], seed=seed,
            notes=[
                f"FSDD leave-one-speaker-out: {every.description}",
                f"seed {seed}: test speaker {held_out!r} ({int(test.sum())} recordings), "
                f"trained on {[s for s in speakers if s != held_out]}",
            ],
        ), self.validation_fraction, stratify=True)
        return data


register(Fsdd())
register(FsddSpeakers())
