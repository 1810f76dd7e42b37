"""dropkit: dropout for PyTorch that is fast, reproducible and measured.

The public API is flat: ``dropkit.Dropout``, ``dropkit.functional.dropout``,
``dropkit.random`` (the Philox contract).
"""

from dropkit import functional, mc, metrics, random, uci
from dropkit.nn import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    SpatialDropout,
)

__version__ = "0.1.0"

__all__ = [
    "AlphaDropout",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "SpatialDropout",
    "functional",
    "mc",
    "metrics",
    "uci",
    "random",
]
