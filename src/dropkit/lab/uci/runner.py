"""Run the protocol on a split, and over data sets and splits with a resumable results file."""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dropkit.lab.uci.loader import UCIDataset, load_uci
from dropkit.lab.uci.model import _GridMLP, _MaskStream, _mc_scores, _Scaled, _train_grid
from dropkit.lab.uci.protocol import SplitResult, UCIProtocol
from dropkit.random import fold_seed

__all__ = ["run_benchmark", "run_split"]

def _split_randomness(
    protocol: UCIProtocol, dataset: str, split: int
) -> tuple[torch.Generator, _MaskStream]:
    """Initial weights and batch order from a torch generator, masks from Philox."""
    seed = fold_seed(protocol.seed, zlib.crc32(dataset.encode()), split)
    return torch.Generator().manual_seed(seed), _MaskStream(fold_seed(seed, 1))


def run_split(
    dataset: UCIDataset, split: int, protocol: UCIProtocol = UCIProtocol()
) -> SplitResult:
    """Run the full protocol (grid search on validation, MC test scores) on one split."""
    started = time.perf_counter()
    generator, stream = _split_randomness(protocol, dataset.name, split)
    train_rows, test_rows = dataset.split(split)
    n_fit = int((1.0 - protocol.validation_fraction) * len(train_rows))
    if n_fit < 2 or n_fit == len(train_rows):
        raise ValueError(
            f"{dataset.name} split {split}: {len(train_rows)} training rows cannot be divided "
            f"into train and validation at fraction {protocol.validation_fraction}"
        )
    fit_rows, val_rows = train_rows[:n_fit], train_rows[n_fit:]
    hidden = protocol.hidden_units or dataset.n_hidden
    epochs = dataset.n_epochs * protocol.epochs_multiplier

    def fit(
        rows: np.ndarray, rates: Sequence[float], taus: Sequence[float]
    ) -> tuple[_GridMLP, list[tuple[float, float]], _Scaled]:
        # Standardised on the rows it trains on, as the reference net does.
        scaled = _Scaled(dataset, rows, f"{dataset.name} split {split}")
        net, grid = _train_grid(
            scaled.inputs(rows), scaled.y, rates, taus, hidden, epochs, protocol, generator,
            stream,
        )
        return net, grid, scaled

    # 1. Grid search: every (rate, tau) trains on the first 80 % of the training
    #    rows and is scored by MC log-likelihood on the last 20 %.
    net, grid, scaled = fit(fit_rows, dataset.dropout_rates, dataset.tau_values)
    _, val_ll, _ = _mc_scores(
        net, scaled.inputs(val_rows), dataset.target[val_rows], scaled.y_scale,
        torch.tensor([t for _, t in grid]), protocol.val_samples, stream,
    )
    best = int(np.argmax(val_ll))
    rate, tau = grid[best]
    # 2. The winner is trained again on the whole training set, and that net is
    #    tested ("a network is trained on the whole training set using the best
    #    hyperparameters", reference README).
    final, _, scaled = fit(train_rows, (rate,), (tau,))
    test_rmse, test_ll, test_standard = _mc_scores(
        final, scaled.inputs(test_rows), dataset.target[test_rows], scaled.y_scale,
        torch.tensor([tau]), protocol.samples, stream,
    )
    return SplitResult(
        dataset=dataset.name,
        split=split,
        dropout_rate=rate,
        tau=tau,
        val_ll=float(val_ll[best]),
        test_rmse=float(test_rmse[0]),
        test_ll=float(test_ll[0]),
        test_rmse_standard=float(test_standard[0]),
        n_train=len(train_rows),
        n_val=len(val_rows),
        n_test=len(test_rows),
        seconds=time.perf_counter() - started,
        protocol=protocol.key(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write leaves a truncated last line; that split reruns.
            print(f"note: ignoring unreadable line {number} of {path}", file=sys.stderr)
    return records


def run_benchmark(
    datasets: Sequence[str],
    splits: Optional[Sequence[int]],
    out: os.PathLike | str,
    *,
    root: Optional[os.PathLike | str] = None,
    protocol: UCIProtocol = UCIProtocol(),
    log=print,
) -> list[dict]:
    """Run (or resume) the protocol; append each finished split to ``out/results.jsonl``.

    ``splits=None`` runs every split of each data set; split numbers beyond a
    data set's count (protein has 5) are skipped. Returns all records in the
    file that match ``protocol``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    key = protocol.key()
    done = {
        (r["dataset"], r["split"]) for r in _load_results(results_path) if r.get("protocol") == key
    }
    # Every name is checked before the first split trains: a typo in the last
    # name should not surface hours into a run.
    for dataset in [load_uci(name, root) for name in datasets]:
        name = dataset.name
        wanted = range(dataset.n_splits) if splits is None else splits
        for split in wanted:
            if split >= dataset.n_splits:
                continue
            if (name, split) in done:
                log(f"{name} split {split}: already in {results_path}, skipped")
                continue
            result = run_split(dataset, split, protocol)
            with results_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(result)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            log(
                f"{name} split {split}: rmse {result.test_rmse:.4f} ll {result.test_ll:.4f} "
                f"(p={result.dropout_rate}, tau={result.tau}) in {result.seconds:.1f}s"
            )
    return [r for r in _load_results(results_path) if r.get("protocol") == key]


