"""Functional dropout ops. Every module in :mod:`dropkit.nn` is a thin wrapper over one of these.

One file per family (``standard``, ``conv``, ``recurrent``, ``weights``,
``noise``, ``learned``, ``fused``) and one of shared argument checks (``checks``); this
``__init__`` is the one place that re-exports them (the names in ``__all__``);
the modules import the checks and types they need from the file that defines
them. The ops sit below the modules: :mod:`dropkit.nn` imports this package,
never the other way round.

Convention: ``p`` is the probability of *dropping* a unit. The explainer's
``r ~ Bernoulli(p)`` notation is about keeping: here ``keep ~ Bernoulli(1 - p)``.
"""

from dropkit.functional.checks import Mode, RankError, validate_p
from dropkit.functional.conv import drop_block2d, drop_block3d, drop_block_gamma, drop_path
from dropkit.functional.fused import bias_dropout_add
from dropkit.functional.learned import concrete_dropout
from dropkit.functional.noise import gaussian_dropout, gaussian_noise
from dropkit.functional.recurrent import embedding_dropout, locked_dropout, word_dropout, zoneout
from dropkit.functional.standard import (
    alpha_dropout,
    apply_alpha_mask,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    feature_alpha_dropout,
    spatial_dropout,
)
from dropkit.functional.weights import drop_connect

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "spatial_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "validate_p",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
    "locked_dropout",
    "embedding_dropout",
    "word_dropout",
    "zoneout",
    "drop_connect",
    "gaussian_dropout",
    "gaussian_noise",
    "concrete_dropout",
    "bias_dropout_add",
    "Mode",
    "RankError",
    "apply_alpha_mask",
    "drop_block_gamma",
]
