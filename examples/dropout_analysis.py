"""What dropout does inside a network, measured: the numbers quoted in docs/tools.md.

Trains one MLP on scikit-learn's digits with and without dropout (a curriculum
ramp to p=0.5 for the dropout one), then prints co-adaptation, the unit-ablation
curve, activation sparsity and the generalisation gap side by side; and shows
check() and recalibrate_batchnorm() on a network with dropout before BatchNorm.
Run: ``python examples/dropout_analysis.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import dropkit
from dropkit import analysis


def _data():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    return train_test_split(x, y, train_size=500, random_state=0, stratify=y)


def _mlp(p: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), dropkit.Dropout(p),
        nn.Linear(128, 128), nn.ReLU(), dropkit.Dropout(p),
        nn.Linear(128, 10),
    )


def _train(model: nn.Module, x, y, epochs: int, schedule=None) -> nn.Module:
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(50):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
        if schedule is not None:
            schedule.step()
    return model.eval()


def measurements() -> None:
    x_train, x_test, y_train, y_test = _data()
    epochs = 30
    models = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        model = _mlp(p)
        # Curriculum dropout: ramp from 0 to p over the first third of training.
        ramp = dropkit.schedule.LinearRamp(model, 0.0, p, steps=epochs // 3) if p else None
        models[p] = _train(model, x_train, y_train, epochs, ramp)
    print(f"digits, MLP 64-128-128-10, {len(x_train)} training / {len(x_test)} test images")
    print(f"{'':34}{'no dropout':>12}{'dropout 0.5':>12}")

    def row(label: str, values) -> None:
        print(f"{label:34}" + "".join(f"{v:>12.3f}" for v in values))

    for layer in ("1", "4"):
        stats = [analysis.co_adaptation(models[p], layer, x_test) for p in (0.0, 0.5)]
        row(f"layer {layer}: mean |corr|", [s.mean_abs_correlation for s in stats])
        row(f"layer {layer}: effective rank", [s.effective_rank for s in stats])
        curves = [
            analysis.ablation_curve(models[p], layer, (x_test, y_test), trials=5)
            for p in (0.0, 0.5)
        ]
        for index in (0, 5, 8):
            fraction = curves[0].fractions[index].item()
            row(f"layer {layer}: accuracy, {fraction:.0%} ablated", [c.mean[index] for c in curves])
        row(f"layer {layer}: ablation area", [c.area for c in curves])
    sparsity = [analysis.activation_sparsity(models[p], "1", x_test) for p in (0.0, 0.5)]
    row("layer 1: fraction inactive", [s.fraction_inactive for s in sparsity])
    row("layer 1: mean activation", [s.mean_activation for s in sparsity])
    gaps = [
        analysis.generalization_gap(models[p], (x_train, y_train), (x_test, y_test))
        for p in (0.0, 0.5)
    ]
    row("train accuracy", [g.train for g in gaps])
    row("test accuracy", [g.test for g in gaps])
    row("generalisation gap", [g.gap for g in gaps])


def batchnorm() -> None:
    x_train, x_test, y_train, _ = _data()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), dropkit.Dropout(0.5),
        nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Linear(128, 10),
    )
    _train(model, x_train, y_train, epochs=5)
    print("\ncheck() on Linear-ReLU-Dropout-Linear-BatchNorm after 5 epochs:")
    for finding in dropkit.check(model, x_test):
        print(" ", finding)
    before = dropkit.variance_shift(model, x_test)["4"]
    dropkit.recalibrate_batchnorm(model, x_train.split(50))
    after = dropkit.variance_shift(model, x_test)["4"]
    print(f"running-variance shift at BatchNorm '4': {before:.3f} before, {after:.3f} after "
          "recalibrate_batchnorm")


if __name__ == "__main__":
    measurements()
    batchnorm()
