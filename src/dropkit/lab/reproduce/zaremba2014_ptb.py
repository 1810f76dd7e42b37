"""``zaremba2014-ptb``: dropout on an LSTM's non-recurrent connections, word-level PTB.

Zaremba, Sutskever & Vinyals (2014), "Recurrent neural network
regularization" (arXiv:1409.2329), section 3 and Table 1. Their LSTM drops the
connections between layers (embedding -> layer 1 -> layer 2 -> softmax) and
never the recurrent ones (h_{t-1} -> h_t), with a fresh mask per time step;
trained by truncated BPTT that carries the state from one window to the next,
plain SGD at learning rate 1 with the gradient's norm clipped to 5 and the
rate halved each epoch after a fixed number of epochs, weights initialised
uniformly in [-0.1, 0.1].

CPU-sized configuration (stated here and in every result): their "small"
net (2 layers of 200 units, 20 unrolled steps, batch 20, init 0.1, clip 5), trained
on the first :data:`TRAIN_TOKENS` tokens of ``ptb.train.txt`` (about 11 % of it)
for ``epochs`` epochs, the rate constant for the first third of them and then
halved each epoch (their small schedule: 4 of 13 epochs, then x0.5). Two arms at
equal size and the same seeds (shared initial weights): ``no-dropout`` and
``dropout`` at p = 0.5 (their medium net's rate), dropkit's :class:`~dropkit.Dropout`
on the three non-recurrent connections. Validation (``ptb.valid.txt``) picks
each run's epoch; test perplexity on the whole ``ptb.test.txt`` is read there.
Their Table 1 compares sizes, each at its best setting; the equal-size
comparison is ours, their numbers are printed beside for scale.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

import dropkit
from dropkit.lab.reproduce._base import (
    PaperNumber,
    Protocol,
    ProtocolResult,
    ReproduceError,
    check_budget,
    fmt_mean_se,
    judge,
    log,
    paired_comparison,
    train_resumable,
)
from dropkit.lab.store import RunStore

NAME = "zaremba2014-ptb"
VERSION = 1
ARMS = ("no-dropout", "dropout")
P = 0.5
HIDDEN = 200
LAYERS = 2
BPTT = 20
BATCH_SIZE = 20
INIT = 0.1
CLIP = 5.0
LR = 1.0
LR_DECAY = 0.5
#: Training tokens used (the first of ptb.train.txt); the CPU-sized part of the protocol.
TRAIN_TOKENS: Optional[int] = 100_000
EVAL_BATCH = 10
#: Training tokens scored in eval mode each epoch for the train perplexity (the gap).
TRAIN_EVAL_TOKENS = 20_000

PAPER = (
    PaperNumber("Non-regularized LSTM (small: 2x200)", 114.5, "test perplexity", "Table 1"),
    PaperNumber("Medium regularized LSTM (2x650, dropout 0.5)", 82.7, "test perplexity",
                "Table 1"),
    PaperNumber("Large regularized LSTM (2x1500, dropout 0.65)", 78.4, "test perplexity",
                "Table 1"),
)


@functools.lru_cache(maxsize=1)
def _load(data_dir: Optional[str]):
    from dropkit.lab.datasets import DatasetNotFoundError, load_ptb

    try:
        corpus = load_ptb(data_dir)
    except (DatasetNotFoundError, ValueError) as error:
        raise ReproduceError(f"{NAME} needs ptb.train/valid/test.txt: {error}") from None
    return corpus


def check_data(data_dir: Optional[Path]) -> None:
    _load(None if data_dir is None else str(data_dir))


class ZarembaLSTM(nn.Module):
    """Embedding, stacked single-layer LSTMs and a softmax; dropout between them only.

    Shape: ids ``(T, B)`` and state -> logits ``(T, B, vocab)`` and state.
    """

    def __init__(self, vocab: int, hidden: int, layers: int, p: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.lstms = nn.ModuleList(nn.LSTM(hidden, hidden) for _ in range(layers))
        # One dropout per non-recurrent connection: input of each layer and the softmax's.
        self.drops = nn.ModuleList(dropkit.Dropout(p) for _ in range(layers + 1))
        self.decoder = nn.Linear(hidden, vocab)
        for weight in self.parameters():
            nn.init.uniform_(weight, -INIT, INIT)

    def forward(self, ids: Tensor, state: Optional[list]) -> tuple[Tensor, list]:
        x = self.embedding(ids)
        state = state or [None] * len(self.lstms)
        new_state = []
        for drop, lstm, layer_state in zip(self.drops[:-1], self.lstms, state, strict=True):
            x, hc = lstm(drop(x), layer_state)
            new_state.append(hc)
        return self.decoder(self.drops[-1](x)), new_state


def _detach(state: list) -> list:
    return [(h.detach(), c.detach()) for h, c in state]


@torch.no_grad()
def _perplexity(model: ZarembaLSTM, stream: Tensor) -> float:
    from dropkit.lab.datasets import batchify, bptt_batches

    model.eval()
    total, count, state = 0.0, 0, None
    for inputs, targets in bptt_batches(batchify(stream, EVAL_BATCH), BPTT):
        logits, state = model(inputs, state)
        total += nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


class _Trainer:
    def __init__(self, corpus, train: Tensor, arm: str, seed: int, epochs: int):
        from dropkit.lab.datasets import batchify

        torch.manual_seed(seed)
        self.corpus = corpus
        self.model = ZarembaLSTM(len(corpus.vocab), HIDDEN, LAYERS, P if arm == "dropout" else 0.0)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.data = batchify(train, BATCH_SIZE)
        self.epochs = epochs

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from dropkit.lab.datasets import bptt_batches

        constant = max(1, math.ceil(self.epochs / 3))
        lr = LR * LR_DECAY ** max(0, epoch - constant)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        started = time.process_time()
        self.model.train()
        total, count, state = 0.0, 0, None
        for inputs, targets in bptt_batches(self.data, BPTT):
            logits, state = self.model(inputs, state)
            state = _detach(state)   # truncated BPTT: the state carries on, its gradient stops
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.optimizer.step()
            total, count = total + loss.item() * targets.numel(), count + targets.numel()
        cpu = time.process_time() - started
        return {
            "lr": lr,
            "fit_perplexity": math.exp(total / count),
            # .t() restores the stream order of batchify's columns.
            "train_perplexity": _perplexity(
                self.model, self.data.t().flatten()[:TRAIN_EVAL_TOKENS]),
            "val_perplexity": _perplexity(self.model, self.corpus.valid),
            "test_perplexity": _perplexity(self.model, self.corpus.test),
            "train_cpu_seconds": cpu,
        }

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])


def _by_validation(epochs: list[dict]) -> dict:
    return min(epochs, key=lambda row: (row["val_perplexity"], row["epoch"]))


def run(store: RunStore, data_dir: Optional[Path], epochs: int, seeds: Sequence[int],
        progress: bool) -> ProtocolResult:
    epochs, seeds = check_budget(NAME, epochs, seeds)
    corpus = _load(None if data_dir is None else str(data_dir))
    train = corpus.train if TRAIN_TOKENS is None else corpus.train[:TRAIN_TOKENS]
    name = NAME if epochs == PROTOCOL.default_epochs else f"{NAME}-e{epochs}"
    experiment = store.ensure_experiment(
        name, f"reproduce:{NAME}", {"protocol": NAME, "version": VERSION, "epochs": epochs,
                                     "seeds": list(seeds)},
    )
    selected: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    last: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            config = {
                "variant": arm, "p": P if arm == "dropout" else 0.0, "seed": seed,
                "epochs": epochs, "hidden": HIDDEN, "layers": LAYERS, "bptt": BPTT,
                "batch_size": BATCH_SIZE, "init": INIT, "clip": CLIP, "lr": LR,
                "lr_decay": LR_DECAY, "train_tokens": int(train.numel()), "version": VERSION,
            }
            key = f"{arm}/seed={seed}"
            rows = train_resumable(
                store, experiment.id, key, config,
                lambda a=arm, s=seed: _Trainer(corpus, train, a, s, epochs),
                select=_by_validation, progress=progress, label=f"{name} {key}",
            )
            selected[arm][seed] = _by_validation(rows)
            last[arm][seed] = rows[-1]
    log(progress, f"{name}: all runs finished")
    return _result(name, epochs, seeds, int(train.numel()), selected, last)


def _result(name, epochs, seeds, train_tokens, selected, last) -> ProtocolResult:
    result = ProtocolResult(f"{NAME}: {PROTOCOL.citation}")
    rows = []
    for arm in ARMS:
        pick = [selected[arm][s] for s in seeds]
        rows.append([
            f"2x{HIDDEN}", arm, str(len(seeds)),
            fmt_mean_se([r["test_perplexity"] for r in pick], digits=1),
            fmt_mean_se([last[arm][s]["test_perplexity"] for s in seeds], digits=1),
            fmt_mean_se([r["val_perplexity"] for r in pick], digits=1),
            fmt_mean_se([r["train_perplexity"] for r in pick], digits=1),
            ", ".join(str(r["epoch"]) for r in pick),
        ])
    result.tables.append((
        ["net", "arm", "seeds", "test ppl (best-val epoch)", "test ppl (last epoch)",
         "valid ppl (best)", "train ppl (same epoch)", "selected epoch per seed"], rows))
    result.tables.append((
        ["paper (Zaremba et al., 2014)", "test perplexity", "where"],
        [[p.label, f"{p.value:.1f}", p.source] for p in PAPER]))

    def log_gap(row: dict) -> float:
        # Log-perplexity gap (test minus train cross-entropy, nats/token), zero if underfitting.
        return max(math.log(row["test_perplexity"]) - math.log(row["train_perplexity"]), 0.0)

    comparisons = [
        paired_comparison(
            f"2x{HIDDEN}: dropout on non-recurrent connections lowers test perplexity",
            "test perplexity", {s: r["test_perplexity"] for s, r in selected["no-dropout"].items()},
            {s: r["test_perplexity"] for s, r in selected["dropout"].items()},
            lower_is_better=True),
        paired_comparison(
            f"2x{HIDDEN}: dropout shrinks the generalisation gap", "log-perplexity gap",
            {s: log_gap(r) for s, r in selected["no-dropout"].items()},
            {s: log_gap(r) for s, r in selected["dropout"].items()}, lower_is_better=True),
    ]
    result.comparisons = judge(comparisons)
    result.notes = [
        f"experiment {name!r} in the run store. CPU-sized: 2x{HIDDEN} LSTM trained on the "
        f"first {train_tokens:,} tokens of ptb.train.txt for {epochs} epochs "
        f"({epochs * (train_tokens // BATCH_SIZE // BPTT):,} updates); the paper's nets train "
        "on all 929,589 tokens for 13 (small) to 55 (large) epochs.",
        f"Train perplexity is measured in eval mode on the first {TRAIN_EVAL_TOKENS:,} training "
        "tokens; the gap is max(log test ppl - log train ppl, 0).",
        "Paired by seed (both arms share initial weights); verdicts use the epoch with the "
        "lowest validation perplexity.",
    ]
    return result


PROTOCOL = Protocol(
    name=NAME,
    citation="Zaremba, Sutskever & Vinyals (2014), Recurrent neural network regularization, "
    "arXiv:1409.2329, Table 1",
    description="word-level PTB, 2x200 LSTM, dropout 0.5 on non-recurrent connections vs none, "
    "truncated BPTT, SGD lr 1 clip 5, same seeds; CPU-sized: first 100k training tokens",
    paper_numbers=PAPER,
    default_epochs=6,
    default_seeds=(0, 1, 2),
    budget_unit="epochs over the first 100,000 training tokens (6 runs)",
    budget_note="6 runs x 6 epochs of 250 updates; 31 minutes measured here (2026-12-01), "
    "but both arms stay near 680 perplexity at this budget (benchmarks/RESULTS.md)",
    check_data=check_data,
    run=run,
)
