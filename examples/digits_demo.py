"""Train one MLP with and without dropout on scikit-learn digits; print accuracies side by side."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import dropkit


def _data():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    # A small training set makes overfitting, and so dropout's effect, visible.
    return train_test_split(x, y, train_size=300, random_state=0, stratify=y)


def _train(p: float, x_train, y_train, epochs: int = 300, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), dropkit.Dropout(p),
        nn.Linear(512, 512), nn.ReLU(), dropkit.Dropout(p),
        nn.Linear(512, 10),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    x_train, x_test, y_train, y_test = _data()
    print(f"digits: {len(x_train)} training / {len(x_test)} test images, MLP 64-512-512-10")
    print(f"{'dropout p':>10} {'train acc':>10} {'test acc':>10} {'gap':>8}")
    for p in (0.0, 0.5):
        model = _train(p, x_train, y_train)
        train_acc, test_acc = _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test)
        print(f"{p:>10.1f} {train_acc:>10.4f} {test_acc:>10.4f} {train_acc - test_acc:>8.4f}")


if __name__ == "__main__":
    main()
