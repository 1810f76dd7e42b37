"""Readers for the lab's real data sets: pure functions returning tensors, no training code.

* :mod:`~dropkit.lab.datasets.idx`: IDX files, MNIST and Fashion-MNIST (download + MD5 check);
* :mod:`~dropkit.lab.datasets.text`: word-level Penn Treebank, char-level tiny-shakespeare;
* :mod:`~dropkit.lab.datasets.fsdd`: Free Spoken Digit Dataset wav files and log-mel features.

Every reader takes ``data_dir`` (else ``$DROPKIT_DATA``, else the dropkit cache) and
raises :class:`DatasetNotFoundError` naming the missing files, the folders searched
and how to get them. :func:`status` summarises every data set for ``dropkit lab tasks``.
"""

from __future__ import annotations

from typing import Optional

from dropkit.lab.datasets import fsdd, idx, text
from dropkit.lab.datasets._common import (
    DATA_ENV_VAR,
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    DownloadError,
    PathLike,
    default_cache_dir,
)
from dropkit.lab.datasets.fsdd import FsddSet, load_fsdd, log_mel_spectrogram, mel_filterbank
from dropkit.lab.datasets.idx import (
    ImageSet,
    load_fashion_mnist,
    load_mnist,
    load_train_test,
    read_idx,
    split_test_set,
)
from dropkit.lab.datasets.text import (
    Corpus,
    Vocabulary,
    batchify,
    bptt_batches,
    load_ptb,
    load_tinyshakespeare,
)

__all__ = [
    "DATA_ENV_VAR",
    "ChecksumError",
    "Corpus",
    "DataFormatError",
    "DatasetNotFoundError",
    "DownloadError",
    "FsddSet",
    "ImageSet",
    "Vocabulary",
    "batchify",
    "bptt_batches",
    "default_cache_dir",
    "fsdd",
    "idx",
    "load_fashion_mnist",
    "load_fsdd",
    "load_mnist",
    "load_ptb",
    "load_tinyshakespeare",
    "load_train_test",
    "log_mel_spectrogram",
    "mel_filterbank",
    "read_idx",
    "split_test_set",
    "status",
    "text",
    "DATASETS",
]

#: Names accepted by :func:`status`.
DATASETS = ("mnist", "fashion-mnist", "ptb", "tinyshakespeare", "fsdd")


def status(name: str, data_dir: Optional[PathLike] = None) -> tuple[bool, str]:
    """``(present, message)`` for data set ``name`` in :data:`DATASETS`; never downloads."""
    if name in ("mnist", "fashion-mnist"):
        return idx.status(data_dir, name)
    if name in ("ptb", "tinyshakespeare"):
        return text.status(data_dir, name)
    if name == "fsdd":
        return fsdd.status(data_dir)
    raise ValueError(f"data set has to be one of {DATASETS}, but got {name!r}")
