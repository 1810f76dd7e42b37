"""dropkit: dropout for PyTorch that is fast, reproducible and measured.

The public API is flat: ``dropkit.Dropout``, ``dropkit.functional.dropout``,
``dropkit.random`` (the Philox contract).
"""

from dropkit import (
    acquisition,
    analysis,
    calibration,
    conformal,
    distributed,
    functional,
    mc,
    metrics,
    random,
    schedule,
)
from dropkit.check import Finding, check, recalibrate_batchnorm, variance_shift
from dropkit.constraints import MaxNorm, max_norm_
from dropkit.convert import Conversion, convert, set_p
from dropkit.losses import r_drop_loss
from dropkit.nn import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    SpatialDropout,
)
from dropkit.nn.conv import DropBlock2d, DropBlock3d, DropPath
from dropkit.nn.fused import BiasDropoutAdd
from dropkit.nn.learned import ConcreteDropout
from dropkit.nn.noise import GaussianDropout, GaussianNoise
from dropkit.nn.recurrent import (
    EmbeddingDropout,
    LockedDropout,
    WeightDrop,
    WordDropout,
    Zoneout,
)
from dropkit.nn.weights import DropConnect

__version__ = "0.1.0"

__all__ = [
    "AlphaDropout",
    "BiasDropoutAdd",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "SpatialDropout",
    "distributed",
    "functional",
    "mc",
    "metrics",
    "acquisition",
    "calibration",
    "conformal",
    "uci",
    "random",
    "ConcreteDropout",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnect",
    "DropPath",
    "EmbeddingDropout",
    "GaussianDropout",
    "GaussianNoise",
    "LockedDropout",
    "WeightDrop",
    "WordDropout",
    "Zoneout",
    "losses",
    "MaxNorm",
    "max_norm_",
    "r_drop_loss",
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


def __getattr__(name: str):
    # dropkit.uci is also a script (`python -m dropkit.uci`); importing it eagerly here
    # would make runpy warn that the module was already imported.
    if name == "uci":
        import importlib

        return importlib.import_module("dropkit.uci")
    raise AttributeError(f"module 'dropkit' has no attribute {name!r}")
