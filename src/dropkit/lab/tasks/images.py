"""MNIST and Fashion-MNIST from their IDX files, each with an MLP and a CNN.

Tasks: ``mnist-mlp``, ``mnist-cnn``, ``fashion-mnist-mlp``, ``fashion-mnist-cnn``.
The standard 60k/10k split is used when its files are present; otherwise the
reader's documented ``from_test_set`` fallback splits the 10k test images
80/20 (stratified, fixed seed), and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

import torch
from torch import nn

from dropkit.lab.datasets import DatasetNotFoundError, load_train_test
from dropkit.lab.datasets import status as dataset_status
from dropkit.lab.tasks import (
    DataStatus,
    MissingDataError,
    Task,
    TaskData,
    make_dropout,
    register,
    with_validation,
)
from dropkit.lab.tasks.mnist1d import MLP

__all__ = ["ImageCNN", "ImageMLP"]


class ImageMLP(MLP):
    """784-h-h-10 with dropout after each hidden ReLU (Srivastava et al., 2014's MNIST MLPs
    used 1024-2048 units; 512 keeps one epoch at a few seconds on one core).

    Input dropout (their p=0.2 on pixels) is left out so one ``p`` means one thing
    across tasks. Shape: ``(N, 1, 28, 28)`` -> ``(N, 10)``.
    """

    def __init__(self, p: float, variant: str = "standard", hidden: int = 512):
        super().__init__(28 * 28, p, variant, hidden=hidden)
        self.hidden.insert(0, nn.Flatten())


class ImageCNN(nn.Module):
    """Two conv-ReLU-pool blocks with channel dropout after each, then dense with dropout.

    The layout of the Keras MNIST CNN example (narrower: 16 and 32 channels).
    Shape: ``(N, 1, H, W)`` -> ``(N, 10)``; ``input_size=(H, W)`` sizes the dense
    layer, or ``pool_to=(h, w)`` average-pools the maps to a fixed grid first
    (inputs of varying size, e.g. spectrograms).
    """

    def __init__(
        self,
        p: float,
        variant: str = "standard",
        width: int = 16,
        hidden: int = 128,
        *,
        input_size: tuple[int, int] = (28, 28),
        pool_to: Optional[tuple[int, int]] = None,
    ):
        super().__init__()
        grid = pool_to or (input_size[0] // 4, input_size[1] // 4)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            make_dropout(variant, p, "conv2d"),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            make_dropout(variant, p, "conv2d"),
            nn.AdaptiveAvgPool2d(pool_to) if pool_to else nn.Identity(),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(
            nn.Linear(2 * width * grid[0] * grid[1], hidden),
            nn.ReLU(),
            make_dropout(variant, p, "dense"),
        )
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.features(x)))


class _ImageTask(Task):
    dataset: ClassVar[str]
    model: ClassVar[str]
    # 10k of the 60k training images: the customary MNIST 50k/10k train/validation split.
    validation_fraction = 1 / 6

    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        present, message = dataset_status(self.dataset, data_dir)
        damaged = not present and f"{message.split(':', 1)[0]}: damaged:" in message
        if present:
            hint = ""
        elif damaged:
            hint = "Replace the damaged file named above with the original."
        else:
            hint = (
                "To download once into the cache: python -c \"from dropkit.lab.datasets "
                f"import load_train_test; load_train_test('{self.dataset}')\""
            )
        return DataStatus(present, message, hint, damaged)

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            # download=False: the lab never reaches the network; data_status told the user how.
            train, test = load_train_test(
                self.dataset, data_dir, from_test_set="auto", download=False
            )
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error

        def pixels(images: torch.Tensor) -> torch.Tensor:
            return images.float().div_(255).unsqueeze(1)

        return with_validation(TaskData(
            pixels(train.images), train.labels, pixels(test.images), test.labels,
            notes=[f"train: {train.description}", f"test: {test.description}"],
        ), self.validation_fraction, stratify=True)

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        return ImageMLP(p, variant) if self.model == "mlp" else ImageCNN(p, variant)


def _task(dataset: str, model: str, title: str, epochs: int) -> _ImageTask:
    layout = (
        "MLP 784-512-512-10, dropout after each hidden layer" if model == "mlp" else
        "CNN conv16-pool-Dropout2d-conv32-pool-Dropout2d-dense128-Dropout"
    )
    attributes = {
        "name": f"{dataset}-{model}",
        "dataset": dataset,
        "model": model,
        "description": (
            f"{title} 28x28 images (standard split, or the 10k test images split 80/20 when the "
            f"training images are absent; 1/6 of the training images held out for validation); "
            f"{layout}."
        ),
        "defaults": {
            "rates": [0.0, 0.2, 0.5],
            "seeds": [0],
            "epochs": epochs,
            "batch_size": 64,
            "lr": 1e-3,
            "weight_decay": 0.0,
        },
    }
    return type(f"_{dataset}_{model}".replace("-", "_"), (_ImageTask,), attributes)()


for _dataset, _title in (("mnist", "MNIST handwritten digits,"),
                         ("fashion-mnist", "Fashion-MNIST clothing,")):
    register(_task(_dataset, "mlp", _title, epochs=10))
    register(_task(_dataset, "cnn", _title, epochs=6))
