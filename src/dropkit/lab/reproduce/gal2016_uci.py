"""``gal2016-uci``: the UCI regression benchmark of MC dropout, behind ``lab reproduce``.

Gal & Ghahramani (2016), "Dropout as a Bayesian approximation: representing
model uncertainty in deep learning" (ICML), Table 1, with the grid-search
protocol of their public code, as implemented by :mod:`dropkit.uci` (its
docstring states every step). This file only drives it: each (data set,
split) is one run of the store, finished when its split is; a rerun skips
finished splits (the split is the unit of resumption, as in ``dropkit lab uci``).

Here ``--seeds`` are split indices (the paper's repetitions are its fixed
splits) and ``--epochs`` is the reference's epoch multiplier (each net trains
``n_epochs x E`` epochs; the published numbers use 100). The default runs the
four smallest data sets. The verdict pairs, per split, the MC-averaged test
RMSE (T = 10000) with the weight-scaling RMSE of the same net.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

# The one import of the benchmark (it may move: change it here only).
from dropkit.lab import uci as _uci
from dropkit.lab.reproduce._base import (
    Comparison,
    PaperNumber,
    Protocol,
    ProtocolResult,
    ReproduceError,
    check_budget,
    judge,
    log,
    paired_comparison,
)
from dropkit.lab.store import RunStore

NAME = "gal2016-uci"
#: Data sets of the default run (the four smallest of the paper's nine).
DATASETS: tuple[str, ...] = ("yacht", "bostonHousing", "energy", "concrete")
#: MC samples on test and on validation (the benchmark's defaults); tests lower them.
SAMPLES = 10_000
VAL_SAMPLES = 1_000

# The benchmark's typed-in copy of the published table (its only copy in the tree).
PAPER = tuple(
    PaperNumber(f"{name}: MC dropout test RMSE (grid search)", rmse, "RMSE",
                "DropoutUncertaintyExps README (2018 update of Table 1)")
    for name, (rmse, *_rest) in _uci.PUBLISHED_TYPED_IN.items() if name in DATASETS
)


def _root(data_dir: Optional[Path]) -> Path:
    if data_dir is None:
        return Path(_uci.default_uci_root())
    data_dir = Path(data_dir)
    return data_dir / "uci" if (data_dir / "uci").is_dir() else data_dir


def _datasets(data_dir: Optional[Path]) -> list:
    root = _root(data_dir)
    try:
        return [_uci.load_uci(name, root) for name in DATASETS]
    except (FileNotFoundError, ValueError) as error:
        raise ReproduceError(f"{NAME} needs the UCI folders under {root}: {error}") from None


def check_data(data_dir: Optional[Path]) -> None:
    _datasets(data_dir)


def run(store: RunStore, data_dir: Optional[Path], epochs: int, seeds: Sequence[int],
        progress: bool) -> ProtocolResult:
    epochs, splits = check_budget(NAME, epochs, seeds)
    datasets = _datasets(data_dir)
    for dataset in datasets:
        if max(splits) >= dataset.n_splits:
            raise ReproduceError(
                f"--seeds are split indices for {NAME}: {dataset.name} has splits "
                f"0..{dataset.n_splits - 1}, but {max(splits)} was asked for"
            )
    try:
        protocol = _uci.UCIProtocol(epochs_multiplier=epochs, samples=SAMPLES,
                                    val_samples=VAL_SAMPLES)
    except ValueError as error:
        raise ReproduceError(str(error)) from None
    name = NAME if epochs == PROTOCOL.default_epochs else f"{NAME}-e{epochs}"
    experiment = store.ensure_experiment(
        name, f"reproduce:{NAME}", {"protocol": NAME, "uci_protocol": protocol.key(),
                                     "datasets": list(DATASETS), "splits": list(splits)},
    )
    finished = {r.key: r for r in store.runs(experiment.id) if r.status == "finished"}
    records = []
    for dataset in datasets:
        for split in splits:
            key = f"{dataset.name}/split={split}"
            if key in finished:
                log(progress, f"{name} {key}: already finished, read from the store")
                records.append(store.measurements(finished[key].id)["result"])
                continue
            result = asdict(_uci.run_split(dataset, split, protocol))
            # The run is recorded once its split is done: the grid search picks p on
            # validation, so the rate is known only then.
            run_record = store.ensure_run(experiment.id, key, {
                "variant": "mc-dropout", "p": result["dropout_rate"], "seed": split,
                "epochs": dataset.n_epochs * epochs, "dataset": dataset.name,
                "uci_protocol": protocol.key(), "p_chosen_on_validation": True,
            })
            store.finish_run(run_record.id, {"result": result}, {})
            records.append(result)
            log(progress, f"{name} {key}: MC RMSE {result['test_rmse']:.4f}, weight scaling "
                          f"{result['test_rmse_standard']:.4f}, LL {result['test_ll']:.4f}")
    return _result(name, epochs, splits, records, _root(data_dir))


def _result(name, epochs, splits, records, root: Path) -> ProtocolResult:
    readme = root / "README.md"
    published = _uci.published_results(readme if readme.is_file() else None)
    result = ProtocolResult(f"{NAME}: {PROTOCOL.citation}")
    table = _uci.format_table(_uci.summarise(records, published)).splitlines()
    headers = [cell.strip() for cell in table[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    result.tables.append((headers, rows))
    comparisons: list[Comparison] = []
    for dataset in DATASETS:
        mine = [r for r in records if r["dataset"] == dataset]
        comparisons.append(paired_comparison(
            f"{dataset}: MC dropout (T={SAMPLES}) lowers test RMSE vs weight scaling",
            "RMSE", {r["split"]: r["test_rmse_standard"] for r in mine},
            {r["split"]: r["test_rmse"] for r in mine}, lower_is_better=True))
    result.comparisons = judge(comparisons)
    result.notes = [
        f"experiment {name!r} in the run store; splits {', '.join(map(str, splits))} of each "
        f"data set; nets train n_epochs x {epochs} epochs (the published numbers: x 100).",
        "\"within 2 SE\" is the benchmark's agreement rule with the published mean +- SE "
        "(see dropkit.uci); the verdicts are paired by split.",
    ]
    return result


PROTOCOL = Protocol(
    name=NAME,
    citation="Gal & Ghahramani (2016), Dropout as a Bayesian approximation, ICML, Table 1",
    description="UCI regression, 1 hidden layer, dropout rate and tau chosen on validation, "
    "MC dropout test RMSE and log-likelihood vs published; " + ", ".join(DATASETS),
    paper_numbers=PAPER,
    default_epochs=100,
    default_seeds=(0, 1, 2, 3, 4),
    budget_unit="the reference's epoch multiplier: nets train n_epochs x E epochs",
    budget_note="20 splits (4 data sets x 5) at the reference's full protocol",
    check_data=check_data,
    run=run,
)
