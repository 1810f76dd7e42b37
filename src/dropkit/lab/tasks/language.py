"""Language models: word-level Penn Treebank (AWD-LSTM style) and char-level tiny-shakespeare.

Both train on fixed-length windows of the token stream, shuffled like any
other examples, with the LSTM state starting from zero in every window. That
keeps the lab's one training loop for every task; it costs some perplexity
against truncated BPTT that carries the state across windows (Zaremba et al.,
2014), so the numbers are for comparing dropout rates, not papers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Optional

from torch import Tensor, nn

import dropkit
from dropkit.lab.datasets import DatasetNotFoundError, load_ptb, load_tinyshakespeare
from dropkit.lab.datasets import status as dataset_status
from dropkit.lab.tasks import (
    DataStatus,
    MissingDataError,
    Task,
    TaskData,
    make_dropout,
    register,
    with_validation,
)

__all__ = ["AwdLstm", "CharLstm", "LanguageModelTask", "windows"]


def windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping ``(inputs, targets)`` windows ``(N, seq_len)``; targets are shifted by one.

    Every token after the first is a target exactly once; the tail that does not
    fill a window is dropped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len has to be >= 1, but got {seq_len}")
    count = (stream.numel() - 1) // seq_len
    if count < 1:
        raise ValueError(
            f"a stream of {stream.numel()} tokens is too short for one window of {seq_len} + 1"
        )
    used = count * seq_len
    return stream[:used].view(count, seq_len), stream[1 : used + 1].view(count, seq_len)


class AwdLstm(nn.Module):
    """Word-level LSTM LM regularised as AWD-LSTM (Merity, Keskar & Socher, 2018), small.

    ``standard`` variant, one rate ``p`` for the whole recipe: EmbeddingDropout
    drops whole words at ``p / 4`` (AWD's 0.1 beside its 0.4 output dropout),
    LockedDropout (one mask per sequence) on the embeddings and on the LSTM
    output, WeightDrop (DropConnect) on the hidden-to-hidden matrix. Any other
    variant puts that variant's dense dropout on the embeddings and on the LSTM
    output only, as Zaremba et al. (2014) did, for a side-by-side comparison.

    Shape: ids ``(B, T)`` -> logits ``(B, T, vocab)``.
    """

    def __init__(self, vocab: int, p: float, variant: str = "standard", *, embed: int = 128,
                 hidden: int = 128):
        super().__init__()
        embedding = nn.Embedding(vocab, embed)
        lstm = nn.LSTM(embed, hidden, batch_first=True)
        if variant == "standard":
            self.embedding: nn.Module = dropkit.EmbeddingDropout(embedding, p=p / 4)
            self.input_drop: nn.Module = dropkit.LockedDropout(p, batch_first=True)
            self.lstm: nn.Module = dropkit.WeightDrop(lstm, ["weight_hh_l0"], p=p)
            self.hidden: nn.Module = dropkit.LockedDropout(p, batch_first=True)
        else:
            self.embedding, self.lstm = embedding, lstm
            self.input_drop = make_dropout(variant, p, "dense")
            self.hidden = make_dropout(variant, p, "dense")
        self.head = nn.Linear(hidden, vocab)
        if embed == hidden:
            # Tied input and output embeddings (Press & Wolf, 2017; AWD-LSTM does it too).
            self.head.weight = embedding.weight

    def forward(self, ids: Tensor) -> Tensor:
        output, _ = self.lstm(self.input_drop(self.embedding(ids)))
        return self.head(self.hidden(output))


class CharLstm(nn.Module):
    """Two-layer char-level LSTM (Karpathy's char-rnn layout), dropout between layers and before
    the decoder: LockedDropout for the ``standard`` variant, the variant's dense dropout otherwise.

    Shape: ids ``(B, T)`` -> logits ``(B, T, vocab)``.
    """

    def __init__(self, vocab: int, p: float, variant: str = "standard", *, embed: int = 32,
                 hidden: int = 128):
        super().__init__()

        def drop() -> nn.Module:
            if variant == "standard":
                return dropkit.LockedDropout(p, batch_first=True)
            return make_dropout(variant, p, "dense")

        self.embedding = nn.Embedding(vocab, embed)
        self.lstm1 = nn.LSTM(embed, hidden, batch_first=True)
        self.between = drop()
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.hidden = drop()
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        output, _ = self.lstm1(self.embedding(ids))
        output, _ = self.lstm2(self.between(output))
        return self.head(self.hidden(output))


class LanguageModelTask(Task):
    """Shared parts of the LM tasks: windows as examples, per-token cross-entropy."""

    kind = "language_model"
    eval_batch_size = 64
    validation_fraction = 0.1
    # AWD-LSTM clips at 0.25 with SGD; with Adam's normalised steps 1.0 only stops spikes.
    clip_grad_norm = 1.0
    dataset: ClassVar[str]
    seq_len: ClassVar[int]

    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        present, message = dataset_status(self.dataset, data_dir)
        hint = "" if present else (
            f"Put the files named above into a folder and pass it as --data-dir "
            f"(or set $DROPKIT_DATA); {self.dataset} has no automatic download."
        )
        return DataStatus(present, message, hint)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output.flatten(0, -2), target.flatten())

    def score(self, output: Tensor, target: Tensor, y_scale: float = 1.0) -> float:
        return self.metric_from_loss(self.loss(output, target).item())

    def metric_from_loss(self, loss: float) -> float:
        """Perplexity ``exp(loss)``, or bits per character ``loss / ln 2``."""
        if self.metric == "bits_per_char":
            return loss / math.log(2)
        return math.exp(min(loss, 700.0))  # exp overflows a float past ~709

    def _data(
        self, train: Tensor, test: Tensor, notes: list[str], valid: Optional[Tensor] = None
    ) -> TaskData:
        """Windows of each stream; without a ``valid`` stream the last 10% of train's windows."""
        x_train, y_train = windows(train, self.seq_len)
        x_test, y_test = windows(test, self.seq_len)
        data = TaskData(x_train, y_train, x_test, y_test, notes=notes)
        if valid is None:
            return with_validation(data, self.validation_fraction, contiguous=True)
        data.x_val, data.y_val = windows(valid, self.seq_len)
        data.notes.append(
            f"validation: the corpus's own validation stream ({len(data.y_val)} windows); each "
            "run's reported epoch is the one with the best validation perplexity"
        )
        return data

    def dropout_layout(self, variant: str) -> list[tuple[str, str]]:
        # The layout does not depend on the vocabulary: a 2-word one builds it without data.
        vocab, self._vocab = self._vocab, self._vocab or 2
        try:
            return super().dropout_layout(variant)
        finally:
            self._vocab = vocab


class Ptb(LanguageModelTask):
    name = "ptb"
    metric = "perplexity"
    dataset = "ptb"
    seq_len = 35
    description = (
        "Penn Treebank words (Mikolov's 10k vocabulary: trained on ptb.train.txt, tested on "
        "ptb.test.txt; without ptb.train.txt, trained on 90% of ptb.valid.txt instead); tied "
        "LSTM 128 with AWD-LSTM dropout (Embedding-, Locked-, WeightDrop); perplexity."
    )
    defaults = {
        "rates": [0.0, 0.3],
        "seeds": [0],
        "epochs": 4,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.0,
    }

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            corpus = load_ptb(data_dir, if_train_missing="train-on-valid")
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error
        self._vocab = len(corpus.vocab)
        notes = [
            f"PTB: {corpus.description}",
            f"{len(corpus.vocab)} word vocabulary; windows of {self.seq_len} tokens, LSTM state "
            "reset per window, so perplexities are above truncated-BPTT ones.",
        ]
        # ptb.valid.txt is the validation stream; when it was trained on (no ptb.train.txt)
        # the reader's held-out rest of it is.
        return self._data(corpus.train, corpus.test, notes, valid=corpus.valid)

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        # The vocabulary size depends on which PTB files exist, so load() records it.
        if self._vocab is None:
            raise RuntimeError("ptb: load() the data before building the model")
        return AwdLstm(self._vocab, p, variant)

    _vocab: Optional[int] = None


class TinyShakespeare(LanguageModelTask):
    name = "shakespeare"
    metric = "bits_per_char"
    dataset = "tinyshakespeare"
    seq_len = 100
    #: Characters of the training split used (of ~1.06M) so one run takes a minute or two.
    train_chars = 200_000
    description = (
        "tiny-shakespeare characters (first 200k of the 95% train split; tested on the 5% "
        "valid split); 2-layer LSTM 128 with locked dropout between layers and before the "
        "decoder; bits per character."
    )
    defaults = {
        "rates": [0.0, 0.3],
        "seeds": [0],
        "epochs": 10,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.0,
    }

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        try:
            corpus = load_tinyshakespeare(data_dir)
        except DatasetNotFoundError as error:
            raise MissingDataError(str(error)) from error
        self._vocab = len(corpus.vocab)
        notes = [
            f"tiny-shakespeare: {corpus.description}",
            f"trained on the first {min(self.train_chars, corpus.train.numel())} characters of "
            "train, tested on valid (the char-rnn split has no test part); windows of "
            f"{self.seq_len} characters, LSTM state reset per window.",
        ]
        return self._data(corpus.train[: self.train_chars], corpus.valid, notes)

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        if self._vocab is None:
            raise RuntimeError("shakespeare: load() the data before building the model")
        return CharLstm(self._vocab, p, variant)

    _vocab: Optional[int] = None


register(Ptb())
register(TinyShakespeare())
