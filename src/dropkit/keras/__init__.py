"""dropkit for Keras 3: the same Philox masks on the torch, JAX and TensorFlow backends.

Importing ``dropkit`` never imports Keras; ``import dropkit.keras`` does (install
the ``keras`` extra). With the torch backend the layers run dropkit's torch
ops (native CPU kernel, Triton on GPU); on JAX and TensorFlow they run
:mod:`dropkit.keras.functional`, the contract written in ``keras.ops``.
"""

from __future__ import annotations

try:
    import keras
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dropkit.keras needs Keras 3: pip install 'dropkit[keras]' (and a backend: "
        "torch, jax or tensorflow)"
    ) from error

SUPPORTED_BACKENDS = ("torch", "jax", "tensorflow", "numpy")
if keras.backend.backend() not in SUPPORTED_BACKENDS:
    raise ImportError(
        f"dropkit.keras serves the Keras backends {SUPPORTED_BACKENDS}, but Keras runs on "
        f"{keras.backend.backend()!r}: its unsigned 32-bit integer ops, which dropkit's "
        "Philox needs, are not tested there; set KERAS_BACKEND to one of those"
    )

from dropkit.keras import functional  # noqa: E402
from dropkit.keras.layers import (  # noqa: E402
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
from dropkit.keras.mc import check, dropout_layers, mc_predict  # noqa: E402

__all__ = [
    "SUPPORTED_BACKENDS",
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
