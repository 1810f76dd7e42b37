"""dropkit: dropout for PyTorch that is fast, reproducible and measured.

The public API is flat: ``dropkit.Dropout``, ``dropkit.functional.dropout``,
``dropkit.random`` (the Philox contract).
"""

from dropkit import analysis, functional, random, schedule
from dropkit.check import Finding, check, recalibrate_batchnorm, variance_shift
from dropkit.convert import Conversion, convert, set_p
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
    "random",
    "Conversion",
    "Finding",
    "analysis",
    "check",
    "convert",
    "recalibrate_batchnorm",
    "schedule",
    "set_p",
    "variance_shift",
]
