"""LockedDropout, WeightDrop, EmbeddingDropout, WordDropout, Zoneout."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as torch_F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dropkit
from dropkit.functional import embedding_dropout, locked_dropout, word_dropout, zoneout
from tests.conftest import require_shared


def _binomial_bound(p: float, n: int) -> float:
    return 6 * math.sqrt(p * (1 - p) / n)  # 6 binomial standard deviations


def test_locked_dropout_shares_the_mask_over_time():
    x = torch.ones(7, 64, 32)
    y = locked_dropout(x, 0.3, seed=1)
    assert torch.equal(y, y[:1].expand_as(y))
    dropped = float((y[0] == 0).double().mean())
    assert abs(dropped - 0.3) < _binomial_bound(0.3, 64 * 32)
    batch_first = locked_dropout(x.transpose(0, 1), 0.3, batch_first=True, seed=1)
    assert torch.equal(batch_first, batch_first[:, :1].expand_as(batch_first))
    assert torch.equal(batch_first.transpose(0, 1), y)  # same (B, H) mask either layout
    unbatched = locked_dropout(torch.ones(5, 8), 0.5, seed=2)
    assert torch.equal(unbatched, unbatched[:1].expand_as(unbatched))


def test_locked_dropout_packed_matches_padded():
    lengths = torch.tensor([2, 5, 3])
    x = torch.randn(5, 3, 4)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, out_lengths = pad_packed_sequence(locked_dropout(packed, 0.5, seed=3))
    padded = locked_dropout(x, 0.5, seed=3)
    assert torch.equal(out_lengths, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[:n, b], padded[:n, b])
    assert locked_dropout(packed, 0.5, training=False) is packed


def test_locked_dropout_eval_gradcheck_and_errors():
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert dropkit.LockedDropout(0.5).eval()(x) is x
    assert torch.autograd.gradcheck(lambda t: locked_dropout(t, 0.4, seed=1), (x,))
    with pytest.raises(ValueError, match="got shape \\(5,\\)"):
        locked_dropout(torch.ones(5), 0.5)
    with pytest.raises(ValueError, match="got 1.2"):
        dropkit.LockedDropout(1.2)


def test_weight_drop_masks_hidden_weights_once_per_forward_and_keeps_params():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6)
    wrapped = dropkit.WeightDrop(lstm, ["weight_hh_l0"], p=0.5, seed=7)
    x = torch.randn(5, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = wrapped(x)
    # The output equals the LSTM run with the one masked matrix dkit would draw.
    masked = dropkit.functional.dropout(lstm.weight_hh_l0, 0.5, seed=7, offset=0)
    reference, _ = torch.func.functional_call(lstm, {"weight_hh_l0": masked}, (x,))
    assert torch.equal(out, reference)
    assert not torch.equal(out, lstm(x)[0])
    out.sum().backward()
    grad = lstm.weight_hh_l0.grad
    assert grad is not None and torch.equal(grad == 0, (masked == 0) | (grad == 0))
    names = {f"module.{n}" for n, _ in lstm.named_parameters()}
    assert set(dict(wrapped.named_parameters())) == names
    wrapped.eval()
    assert torch.equal(wrapped(x)[0], lstm(x)[0])
    clone = copy.deepcopy(wrapped)  # old copies that deleted parameters broke deepcopy
    assert torch.equal(clone(x)[0], lstm(x)[0])


def test_weight_drop_gru_linear_and_errors():
    names = ["weight_hh_l0", "weight_hh_l1"]
    gru = dropkit.WeightDrop(torch.nn.GRU(3, 4, num_layers=2), names, 0.3)
    out, h = gru(torch.randn(6, 2, 3))
    assert out.shape == (6, 2, 4) and h.shape == (2, 2, 4)
    linear = dropkit.WeightDrop(torch.nn.Linear(3, 2), ["weight"], 0.5, seed=1)
    twin = copy.deepcopy(linear)
    x = torch.randn(4, 3)
    assert torch.equal(linear(x), twin(x))
    with pytest.raises(ValueError, match="no parameter 'weight_hh_l9'.*weight_hh_l0"):
        dropkit.WeightDrop(torch.nn.LSTM(2, 2), ["weight_hh_l9"])
    with pytest.raises(TypeError, match="wraps an nn.Module"):
        dropkit.WeightDrop("lstm")


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    vocab, p = 2000, 0.25
    emb = torch.nn.Embedding(vocab, 8)
    tokens = torch.arange(vocab).repeat(3)
    y = embedding_dropout(tokens, emb.weight, p, seed=4)
    dropped_rows = (y == 0).all(-1)
    # every occurrence of a word shares its fate; kept rows are scaled by ~1/(1-p)
    assert torch.equal(dropped_rows[:vocab], dropped_rows[vocab : 2 * vocab])
    assert abs(float(dropped_rows[:vocab].double().mean()) - p) < _binomial_bound(p, vocab)
    kept = ~dropped_rows
    expected = emb.weight[tokens[kept]] / (1 - p)
    assert torch.allclose(y[kept], expected, rtol=1e-4)
    # Same as masking the weight matrix row-wise (AWD-LSTM's embedded_dropout).
    row_mask = dropkit.functional.dropout(torch.ones(vocab), p, seed=4)
    assert torch.allclose(y, torch_F.embedding(tokens, emb.weight * row_mask[:, None]))


def test_embedding_dropout_module_eval_grad_and_errors():
    emb = torch.nn.Embedding(10, 3, padding_idx=0).double()
    module = dropkit.EmbeddingDropout(emb, 0.5, seed=2)
    tokens = torch.tensor([[1, 2, 0], [3, 3, 9]])
    assert torch.equal(module.eval()(tokens), emb(tokens))
    module.train()
    weight = emb.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda w: embedding_dropout(tokens, w, 0.5, seed=2), (weight,)
    )
    with pytest.raises(TypeError, match="nn.Embedding, but got Linear"):
        dropkit.EmbeddingDropout(torch.nn.Linear(2, 2))


def test_word_dropout_replaces_ids_and_spares_padding():
    n, p = 50_000, 0.2
    ids = torch.randint(2, 100, (n,))
    ids[::10] = 0
    out = word_dropout(ids, p, unk_index=1, pad_index=0, seed=5)
    assert out.dtype == ids.dtype
    changed = out != ids
    assert torch.all(out[changed] == 1)
    assert torch.all(out[ids == 0] == 0)
    non_pad = ids != 0
    rate = float(changed[non_pad].double().mean())
    assert abs(rate - p) < _binomial_bound(p, int(non_pad.sum()))
    module = dropkit.WordDropout(p, 1, pad_index=0, seed=5)
    assert torch.equal(module(ids), out)
    assert module.eval()(ids) is ids


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: dropkit.WordDropout(0.1), TypeError, "needs unk_index"),
        (lambda: dropkit.WordDropout(0.1, -3), ValueError, "non-negative int token id.*-3"),
        (lambda: word_dropout(torch.ones(3), 0.1, 1), TypeError, "integer tensor.*float32"),
        (lambda: dropkit.WordDropout(1.5, 1), ValueError, "got 1.5"),
    ],
)
def test_word_dropout_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_zoneout_keeps_previous_state_at_rate_p():
    n, p = 40_000, 0.3
    previous, candidate = torch.zeros(n), torch.ones(n)
    y = zoneout(previous, candidate, p, seed=1)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert abs(float((y == 0).double().mean()) - p) < _binomial_bound(p, n)
    assert torch.allclose(zoneout(previous, candidate, p, training=False), torch.full((n,), 0.7))
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: zoneout(u, v, 0.5, seed=3), (a, b))
    with pytest.raises(ValueError, match="one shape"):
        zoneout(torch.zeros(2), torch.zeros(3), 0.1)


def test_zoneout_wraps_lstm_and_gru_cells():
    torch.manual_seed(0)
    cell = dropkit.Zoneout(torch.nn.LSTMCell(3, 5), p_hidden=0.5, p_cell=0.5)
    x = torch.randn(4, 3)
    h, c = cell(x)  # state None -> zeros, like the cell
    assert h.shape == c.shape == (4, 5)
    state = (torch.randn(4, 5), torch.randn(4, 5))
    h_new, c_new = cell.cell(x, state)
    h, c = cell(x, state)
    for out, old, new in ((h, state[0], h_new), (c, state[1], c_new)):
        assert torch.all((out == old) | (out == new))
    assert not torch.equal(h == state[0], c == state[1])  # independent masks
    cell.eval()
    h, c = cell(x, state)
    assert torch.allclose(h, 0.5 * state[0] + 0.5 * h_new)
    gru = dropkit.Zoneout(torch.nn.GRUCell(3, 5), p_hidden=0.2)
    assert gru(x).shape == (4, 5)
    with pytest.raises(TypeError, match="LSTMCell or nn.GRUCell, but got LSTM"):
        dropkit.Zoneout(torch.nn.LSTM(3, 5))
    with pytest.raises(ValueError, match="p_cell has to be between 0 and 1, but got -1.0"):
        dropkit.Zoneout(torch.nn.LSTMCell(3, 5), p_cell=-1.0)


class _LanguageModel(torch.nn.Module):
    """AWD-LSTM in miniature: embedding dropout, locked dropout, weight-dropped LSTM."""

    def __init__(self, vocab: int, width: int = 48):
        super().__init__()
        self.embedding = dropkit.EmbeddingDropout(torch.nn.Embedding(vocab, width), 0.05)
        self.input_drop = dropkit.LockedDropout(0.1)
        self.lstm = dropkit.WeightDrop(torch.nn.LSTM(width, width), ["weight_hh_l0"], 0.2)
        self.output_drop = dropkit.LockedDropout(0.1)
        self.decoder = torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        hidden, _ = self.lstm(self.input_drop(self.embedding(tokens)))
        return self.decoder(self.output_drop(hidden))


def _train_lm(stream: torch.Tensor, vocab: int, steps: int, seq: int = 32, batch: int = 16):
    torch.manual_seed(0)
    model = _LanguageModel(vocab)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (batch,))
        window = torch.stack([stream[s : s + seq + 1] for s in starts.tolist()], dim=1)
        logits = model(window[:-1])
        loss = torch_F.cross_entropy(logits.reshape(-1, vocab), window[1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def _eval_loss(model, stream, vocab, seq=64):
    model.eval()
    usable = (len(stream) - 1) // seq * seq
    inputs = stream[:usable].reshape(-1, seq).T
    targets = stream[1 : usable + 1].reshape(-1, seq).T
    with torch.no_grad():
        return float(torch_F.cross_entropy(model(inputs).reshape(-1, vocab), targets.reshape(-1)))


def test_awd_lstm_learns_a_synthetic_sequence():
    # Tokens follow a fixed cycle with random restarts: next token is predictable
    # from the current one except at restarts (1 in 20), so the loss floor is low.
    generator = torch.Generator().manual_seed(1)
    vocab, n = 12, 6000
    tokens, current = [], 0
    restarts = torch.rand(n, generator=generator) < 0.05
    fresh = torch.randint(0, vocab, (n,), generator=generator)
    for i in range(n):
        current = int(fresh[i]) if restarts[i] else (current + 5) % vocab
        tokens.append(current)
    stream = torch.tensor(tokens)
    model = _train_lm(stream[:5000], vocab, steps=80)
    loss = _eval_loss(model, stream[5000:], vocab)
    # Uniform guessing costs log(12) = 2.48 nats; the restarts alone cost ~0.05*log(12)+H(0.05).
    assert loss < 0.8, loss


def test_awd_lstm_beats_unigram_on_tiny_shakespeare():
    text = require_shared("tinyshakespeare", "input.txt").read_text()[:60_000]
    alphabet = sorted(set(text))
    index = {ch: i for i, ch in enumerate(alphabet)}
    stream = torch.tensor([index[ch] for ch in text])
    vocab = len(alphabet)
    train, valid = stream[:54_000], stream[54_000:]
    counts = torch.bincount(train, minlength=vocab).double() + 1
    unigram = -(counts / counts.sum()).log()[valid].mean().item()
    model = _train_lm(train, vocab, steps=150)
    loss = _eval_loss(model, valid, vocab)
    # A character model must use context to beat the unigram entropy (~3.3 nats) clearly.
    assert loss < unigram - 0.5, (loss, unigram)
