"""dropkit's dropout modules, one file per family, over :mod:`dropkit.functional`."""

from dropkit.nn.base import load_stream_state, stream_state
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
from dropkit.nn.standard import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    SpatialDropout,
)
from dropkit.nn.weights import DropConnect

__all__ = [
    "BiasDropoutAdd",
    "AlphaDropout",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "SpatialDropout",
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
    "stream_state",
    "load_stream_state",
]
