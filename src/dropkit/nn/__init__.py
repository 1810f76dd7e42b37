"""dropkit's dropout modules, one file per family."""

from dropkit.nn.conv import DropBlock2d, DropBlock3d, DropPath
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
]
