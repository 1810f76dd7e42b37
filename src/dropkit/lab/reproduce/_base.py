"""What every protocol shares: the record, the result, the paired test, the resumable run.

Kept apart from ``__init__`` so that protocol files import from here and the
registry imports the protocol files, with arrows pointing one way only.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from typing import Protocol as _Interface

import torch

from dropkit.lab.stats import ALPHA, holm, paired_t_test
from dropkit.lab.store import RunStore

__all__ = [
    "ALPHA",
    "MIN_SEEDS",
    "Comparison",
    "PaperNumber",
    "Protocol",
    "ProtocolResult",
    "ReproduceError",
    "holm",
    "judge",
    "markdown_table",
    "paired_comparison",
    "train_resumable",
]

#: Two-sided significance level of every verdict (after Holm's correction).
#: Fewest paired seeds a verdict needs; with fewer it is "not measured".
MIN_SEEDS = 3


class ReproduceError(ValueError):
    """Bad input for a protocol (name, budget, seeds, data): the CLI exits 2 with its message."""


@dataclass(frozen=True)
class PaperNumber:
    """One number the paper reports, with where it is in the paper."""

    label: str
    value: float
    unit: str
    source: str


@dataclass
class Comparison:
    """A paired comparison over seeds: ``treated - baseline`` per seed, and its verdict."""

    claim: str
    metric: str
    n: int
    effect: float            # mean of the per-seed differences (nan when n == 0)
    low: float               # 95 % t confidence interval of the mean difference
    high: float
    p_value: float           # two-sided paired t-test, before correction
    lower_is_better: bool
    resolution: float        # differences smaller than this are ties (one test sample)
    p_holm: float = math.nan
    verdict: str = ""

    def describe(self) -> str:
        if self.n < MIN_SEEDS:
            return f"{self.claim}: {self.verdict}"
        return (
            f"{self.claim}: {self.verdict} (n={self.n} paired seeds; {self.metric} difference "
            f"{self.effect:+.4g}, 95% CI [{self.low:+.4g}, {self.high:+.4g}]; paired t-test "
            f"p={self.p_value:.3g}, Holm-adjusted p={self.p_holm:.3g} over the protocol's "
            f"comparisons, alpha={ALPHA})"
        )


def paired_comparison(
    claim: str,
    metric: str,
    baseline: Mapping[int, float],
    treated: Mapping[int, float],
    *,
    lower_is_better: bool,
    resolution: float = 0.0,
) -> Comparison:
    """Per-seed differences ``treated[s] - baseline[s]`` over the seeds both have."""
    seeds = sorted(set(baseline) & set(treated))
    diffs = [treated[s] - baseline[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Comparison(claim, metric, 0, math.nan, math.nan, math.nan, math.nan,
                          lower_is_better, resolution)
    if n < 2:
        return Comparison(claim, metric, n, diffs[0], math.nan, math.nan, math.nan,
                          lower_is_better, resolution)
    # The lab's one paired t-test and Holm correction (the report's claims use them too).
    mean, (low, high), p_value = paired_t_test(diffs, ALPHA)
    return Comparison(claim, metric, n, mean, low, high, p_value, lower_is_better, resolution)


def judge(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Fill in each verdict, Holm-correcting over the comparisons that have >= 3 seeds."""
    measured = [c for c in comparisons if c.n >= MIN_SEEDS]
    for comparison, adjusted in zip(measured, holm([c.p_value for c in measured]), strict=True):
        comparison.p_holm = adjusted
    for c in comparisons:
        if c.n < MIN_SEEDS:
            plural = "s" if c.n != 1 else ""
            c.verdict = f"not measured ({c.n} paired seed{plural}; need {MIN_SEEDS})"
        elif abs(c.effect) < c.resolution:
            c.verdict = "tie (mean difference inside one test sample)"
        elif c.p_holm >= ALPHA:
            c.verdict = "no significant difference"
        elif (c.effect < 0) == c.lower_is_better:
            c.verdict = "supported"
        else:
            c.verdict = "contradicted"
    return list(comparisons)


@dataclass
class ProtocolResult:
    """What a protocol returns: tables of ours beside the paper's, verdicts and notes."""

    title: str
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", ""]
        for headers, rows in self.tables:
            parts += [markdown_table(headers, rows), ""]
        if self.comparisons:
            parts.append("Verdicts:")
            parts += [f"- {c.describe()}" for c in self.comparisons]
            parts.append("")
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class RunFunction(_Interface):
    def __call__(
        self,
        store: RunStore,
        data_dir: Optional[Path],
        epochs: int,
        seeds: Sequence[int],
        progress: bool,
    ) -> ProtocolResult: ...


@dataclass(frozen=True)
class Protocol:
    """One paper protocol: what it reproduces, its default budget, and how to run it.

    ``check_data(data_dir)`` raises :class:`ReproduceError` naming what is
    missing, before anything is written. ``run(store, data_dir, epochs, seeds,
    progress)`` trains (or resumes) every run in ``store`` and returns the table.
    ``epochs`` is the protocol's budget unit, described by ``budget_unit``.
    """

    name: str
    citation: str
    description: str
    paper_numbers: tuple[PaperNumber, ...]
    default_epochs: int
    default_seeds: tuple[int, ...]
    budget_unit: str
    budget_note: str
    check_data: Callable[[Optional[Path]], None]
    run: RunFunction


def log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


class EpochTrainer(_Interface):
    """What :func:`train_resumable` drives: one run's model, optimiser and generators."""

    def state(self) -> dict: ...
    def load(self, state: dict) -> None: ...
    def train_epoch(self, epoch: int) -> dict[str, float]: ...


def train_resumable(
    store: RunStore,
    experiment_id: int,
    key: str,
    config: dict,
    trainer_factory: Callable[[], EpochTrainer],
    *,
    select: Callable[[list[dict]], dict],
    progress: bool = False,
    label: str = "",
) -> list[dict]:
    """Train run ``key`` for ``config["epochs"]`` epochs, resuming from its last checkpoint.

    Each epoch's metrics and checkpoint go to the store in one transaction; a
    finished run is returned from the store without training. ``select(epochs)``
    picks the epoch whose metrics become the run's measurements (by validation).
    """
    run = store.ensure_run(experiment_id, key, config)
    if run.status == "finished":
        log(progress, f"{label}: already finished, read from the store")
        return store.epochs(run.id)
    trainer = trainer_factory()
    first = 1
    saved = store.checkpoint(run.id)
    if saved is not None:
        epoch, blob = saved
        trainer.load(torch.load(io.BytesIO(blob), weights_only=True))
        first = epoch + 1
        log(progress, f"{label}: resuming after epoch {epoch}")
    elif store.epochs(run.id):
        store.restart_run(run.id)   # epochs without a checkpoint cannot be continued
    for epoch in range(first, int(config["epochs"]) + 1):
        metrics = trainer.train_epoch(epoch)
        buffer = io.BytesIO()
        torch.save(trainer.state(), buffer)
        store.log_epoch(run.id, epoch, metrics, buffer.getvalue())
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log(progress, f"{label}: epoch {epoch}/{config['epochs']}: {shown}")
    epochs = store.epochs(run.id)
    chosen = select(epochs)
    store.finish_run(run.id, {"selected": chosen, "last": epochs[-1]}, {})
    return epochs


def check_budget(name: str, epochs: Any, seeds: Any) -> tuple[int, tuple[int, ...]]:
    """Validate ``--epochs`` and ``--seeds`` once, where they enter."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ReproduceError(
            f"--epochs has to be a positive integer for {name}, but got {epochs!r}"
        )
    seeds = tuple(seeds)
    if not seeds:
        raise ReproduceError(f"--seeds has to name at least one seed for {name}, but got none")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ReproduceError(f"--seeds has to be non-negative integers, but got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ReproduceError(f"--seeds has a repeated seed: {list(seeds)}")
    return epochs, seeds


def fmt_mean_se(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± standard error`` (sample std / sqrt(n)); the SE is omitted for n < 2."""
    if not values:
        return "n/a"
    scaled = [v * scale for v in values]
    mean = sum(scaled) / len(scaled)
    if len(scaled) < 2:
        return f"{mean:.{digits}f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in scaled) / (len(scaled) - 1))
    return f"{mean:.{digits}f} ± {sd / math.sqrt(len(scaled)):.{digits}f}"
