"""MC dropout and the BatchNorm check for Keras models.

``mc_predict`` keeps every layer in inference mode (BatchNorm uses its moving
statistics) and makes only dropkit's layers sample, each pass with its own
Philox stream; the result is :class:`dropkit.mc.MCResult`, the summary that
``dropkit.mc.predict`` returns for torch models.
"""

from __future__ import annotations

import warnings
from typing import Optional

import keras
import numpy as np

from dropkit.check import Finding
from dropkit.keras.layers import DropkitLayer
from dropkit.random import as_u64, draw_seed, fold_seed

__all__ = ["mc_predict", "check", "dropout_layers"]

_KERAS_DROPOUT = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
)


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    # `_flatten_layers` walks nested models and layers in definition order.
    return [layer for layer in model._flatten_layers(include_self=False)]


def dropout_layers(model: keras.Model) -> list[DropkitLayer]:
    """dropkit's stochastic layers in ``model`` (nested models included), in order."""
    return [layer for layer in _flat_layers(model) if isinstance(layer, DropkitLayer)]


def mc_predict(
    model: keras.Model,
    x,
    samples: int = 100,
    *,
    seed: Optional[int] = None,
    task: str = "classification",
    tau: Optional[float] = None,
    logits: bool = True,
):
    """``samples`` MC-dropout passes of a Keras model (Gal & Ghahramani, 2016).

    Pass ``t`` runs ``model(x, training=False)`` with every dropkit layer ``i``
    sampling the stream ``(fold_seed(seed, i), t)``: BatchNorm and every other
    layer stay in inference mode. Keras' own dropout layers do not sample (they
    only know ``training=True``, which would switch BatchNorm to batch
    statistics): a warning names them; replace them with ``dropkit.keras`` layers.

    Returns:
        :class:`dropkit.mc.MCResult` with ``samples`` of shape ``(T, N, ...)``
        (a torch tensor): ``mean``, ``predictive_entropy``, ``mutual_information``,
        and for ``task="regression"`` the ``variance`` with ``1 / tau`` added.
    """
    import torch

    from dropkit.mc import MCResult

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if task == "regression" and (tau is None or not tau > 0):
        raise ValueError(f"regression needs a model precision tau > 0, got {tau!r}")
    seed = draw_seed() if seed is None else as_u64(seed, "seed")
    layers = dropout_layers(model)
    if not layers:
        raise ValueError(
            f"{model.name} has no dropkit.keras layer to sample; MC dropout needs at least one"
        )
    native = [layer.name for layer in _flat_layers(model) if isinstance(layer, _KERAS_DROPOUT)]
    if native:
        warnings.warn(
            f"Keras dropout layers {native} stay off during mc_predict (only dropkit.keras "
            "layers sample at inference); replace them with dropkit.keras layers",
            stacklevel=2,
        )
    keys = [fold_seed(seed, index) for index in range(len(layers))]
    outputs = []
    try:
        for t in range(samples):
            for layer, key in zip(layers, keys, strict=True):
                layer._mc_stream = (key, t)
            outputs.append(keras.ops.convert_to_numpy(model(x, training=False)))
    finally:
        for layer in layers:
            layer._mc_stream = None
    stacked = torch.from_numpy(np.stack(outputs).astype(np.float32, copy=False))
    return MCResult(stacked, task, tau, logits)


def check(model: keras.Model) -> list[Finding]:
    """Findings about dropout placement: dropout (any kind) before BatchNormalization.

    Li et al. (2019), "Understanding the disharmony between dropout and batch
    normalization by variance shift" (CVPR): a BatchNorm after dropout learns
    training-time variance statistics that inference never sees.
    """
    findings = []
    layers = _flat_layers(model)
    for index, layer in enumerate(layers):
        if not isinstance(layer, (DropkitLayer, *_KERAS_DROPOUT)):
            continue
        later = next(
            (other for other in layers[index + 1:]
             if isinstance(other, keras.layers.BatchNormalization)),
            None,
        )
        if later is None:
            continue
        findings.append(
            Finding(
                "warning", "dropout-before-batchnorm", layer.name,
                f"{type(layer).__name__} runs before BatchNormalization {later.name!r}: the "
                "BatchNorm statistics see dropout's training-time variance, which inference "
                "does not have (variance shift, Li et al., 2019).",
                "move dropout after the last BatchNormalization, or recompute the BatchNorm "
                "statistics with dropout off after training",
            )
        )
    return findings
