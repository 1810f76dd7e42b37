"""dropkit for Keras 3: the same Philox masks on the torch, JAX and TensorFlow backends.

Importing ``dropkit`` never imports Keras; ``import dropkit.keras`` does (install
the ``keras`` extra). With the torch backend the layers run dropkit's torch
ops (native CPU kernel, Triton on GPU); on JAX and TensorFlow they run
:mod:`dropkit.keras.functional`, the contract written in ``keras.ops``.
"""

from __future__ import annotations

try:
    import keras  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dropkit.keras needs Keras 3: pip install 'dropkit[keras]' (and a backend: "
        "torch, jax or tensorflow)"
    ) from error

from dropkit.keras import functional
from dropkit.keras.layers import (
    AlphaDropout,
    DropBlock2D,
    DropkitLayer,
    Dropout,
    DropPath,
    GaussianDropout,
    GaussianNoise,
    SpatialDropout1D,
    SpatialDropout2D,
    SpatialDropout3D,
)
from dropkit.keras.mc import check, dropout_layers, mc_predict

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "DropkitLayer",
    "GaussianDropout",
    "GaussianNoise",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "check",
    "dropout_layers",
    "functional",
    "mc_predict",
]
