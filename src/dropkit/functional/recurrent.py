"""Dropout for recurrent and sequence models: the AWD-LSTM toolbox and Zoneout.

Naive dropout on an RNN samples a new mask at every time step, which destroys
the memory the recurrence carries. The ops here share one mask across time
(:func:`locked_dropout`), drop whole words (:func:`embedding_dropout`,
:func:`word_dropout`) or randomly keep the previous state instead of zeroing
(:func:`zoneout`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from dropkit.functional.checks import RankError, validate_index, validate_input, validate_p
from dropkit.functional.standard import Offset, dropout, keep_mask_like, multiply_mask
from dropkit.random import keep_scale

__all__ = ["Sequenceish", "locked_dropout", "embedding_dropout", "word_dropout", "zoneout"]

Sequenceish = Union[Tensor, PackedSequence]


def _locked_packed(
    packed: PackedSequence,
    p: float,
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
) -> PackedSequence:
    data = packed.data
    validate_input(data, "locked_dropout")
    batch = int(packed.batch_sizes[0])
    ones = torch.ones((batch, *data.shape[1:]), dtype=data.dtype, device=data.device)
    mask = dropout(ones, p, seed=seed, offset=offset, generator=generator)
    # Time step t of the packed data holds the first batch_sizes[t] sequences in
    # sorted order; row r of the mask belongs to original sequence sorted_indices[r],
    # so packed and padded inputs with one seed get the same masks.
    rows = torch.cat([torch.arange(int(n)) for n in packed.batch_sizes]).to(data.device)
    if packed.sorted_indices is not None:
        rows = packed.sorted_indices[rows]
    return packed._replace(data=multiply_mask(data, mask[rows]))


def locked_dropout(
    input: Sequenceish,
    p: float = 0.5,
    training: bool = True,
    *,
    batch_first: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Sequenceish:
    """Drop the same features at every time step of a sequence (variational dropout).

    Gal & Ghahramani (2016), "A theoretically grounded application of dropout in
    recurrent neural networks" (NeurIPS); used between the layers of AWD-LSTM
    (Merity, Keskar & Socher, 2018). Use it on the inputs/outputs of RNN layers
    instead of :class:`torch.nn.Dropout`, whose fresh mask per step is noise the
    recurrence cannot average out.

    Args:
        input: ``(T, B, H)`` (``batch_first=False``), ``(B, T, H)``
            (``batch_first=True``), an unbatched ``(T, H)``, or a
            :class:`~torch.nn.utils.rnn.PackedSequence`; any trailing feature
            shape is allowed.
        p: drop probability in ``[0, 1]``; survivors are scaled by ``1 / (1 - p)``.
        training: apply (``True``) or return ``input`` (``False``).
        batch_first: layout of a tensor input.
        seed, offset, generator: the Philox stream, see :func:`dropkit.functional.dropout`.

    Returns:
        The input's type and shape; one ``(B, H)`` mask shared over time.

    Example::

        >>> h = torch.randn(35, 20, 400)                    # (T, B, H)
        >>> y = locked_dropout(h, 0.3, seed=0)
        >>> bool(((y[0] == 0) == (y[-1] == 0)).all())
        True
    """
    p = validate_p(p)
    if not training or p == 0.0:
        return input
    if isinstance(input, PackedSequence):
        return _locked_packed(input, p, seed, offset, generator)
    validate_input(input, "locked_dropout")
    if input.dim() < 2:
        raise RankError(
            "locked_dropout expects a (T, B, H), (B, T, H) or (T, H) sequence, "
            f"but got shape {tuple(input.shape)}"
        )
    time_dim = 1 if batch_first and input.dim() > 2 else 0
    return dropout(
        input, p, broadcast_dims=(time_dim,), seed=seed, offset=offset, generator=generator
    )


def embedding_dropout(
    input: Tensor,
    weight: Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    padding_idx: Optional[int] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Look up embeddings with whole rows (words) dropped and survivors scaled by ``1/(1-p)``.

    Gal & Ghahramani (2016), section 4.1 ("embedding dropout"), as in AWD-LSTM's
    ``embedded_dropout``: a dropped word is zero at every position of the batch
    it occurs in, so the model cannot rely on any single word.

    Instead of masking the ``(V, D)`` matrix (AWD-LSTM's copy costs ``V*D`` per
    step) a ``(V,)`` row mask is drawn and gathered; outputs and gradients are
    the same as masking the matrix.

    Args:
        input: integer token ids of any shape.
        weight: ``(V, D)`` embedding matrix.
        p: probability of dropping a vocabulary row.
        Other keywords: as :func:`torch.nn.functional.embedding`, and the Philox stream.

    Returns:
        ``(*input.shape, D)``.

    Example::

        >>> emb = torch.nn.Embedding(10_000, 400)
        >>> vectors = embedding_dropout(torch.randint(0, 10_000, (35, 20)), emb.weight, 0.1)
    """
    p = validate_p(p)
    validate_input(weight, "embedding_dropout")
    if weight.dim() != 2:
        raise RankError(
            f"embedding_dropout expects a (V, D) weight, but got shape {tuple(weight.shape)}"
        )
    vectors = torch_F.embedding(
        input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse
    )
    if not training or p == 0.0:
        return vectors
    threshold, _, scale = keep_scale(p)
    rows = weight.narrow(1, 0, 1).squeeze(1)
    row_mask = keep_mask_like(rows, (), threshold, scale, seed, offset, generator)
    return multiply_mask(vectors, row_mask[input].unsqueeze(-1))


def word_dropout(
    input: Tensor,
    p: float,
    unk_index: int,
    training: bool = True,
    *,
    pad_index: Optional[int] = None,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Replace each token id by ``unk_index`` with probability ``p``.

    Bowman et al. (2016), "Generating sentences from a continuous space" and
    Iyyer et al. (2015), "Deep unordered composition rivals syntactic methods";
    also in Sennrich et al.'s NMT. Use it on the input ids of text models so they
    learn to cope with unknown words; unlike :func:`embedding_dropout` the
    replacement has a learned embedding (the ``<unk>`` vector) and nothing is rescaled.

    Args:
        input: integer token ids of any shape (not bool: a mask is not a token id).
        p: replacement probability in ``[0, 1]``.
        unk_index: id written in place of dropped tokens.
        training: apply (``True``) or return ``input`` (``False``).
        pad_index: id that is never replaced (padding).
        seed, offset, generator: the Philox stream.

    Example::

        >>> ids = torch.randint(4, 100, (8, 12))
        >>> noisy = word_dropout(ids, 0.1, unk_index=1, pad_index=0, seed=0)
    """
    p = validate_p(p)
    if (
        not isinstance(input, Tensor)
        or input.is_floating_point()
        or input.is_complex()
        or input.dtype == torch.bool
    ):
        kind = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(f"word_dropout expects an integer tensor of token ids, but got {kind}")
    unk_index = validate_index(unk_index, "unk_index")
    if pad_index is not None:
        pad_index = validate_index(pad_index, "pad_index")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    threshold, _, _ = keep_scale(p)
    keep = keep_mask_like(
        input, (), threshold, 1.0, seed, offset, generator, dtype=torch.float32
    )
    dropped = keep == 0
    if pad_index is not None:
        dropped &= input != pad_index
    return input.masked_fill(dropped, unk_index)


def zoneout(
    previous: Tensor,
    candidate: Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Keep each unit's previous state with probability ``p``, else take the new one.

    Krueger et al. (2017), "Zoneout: Regularizing RNNs by randomly preserving
    hidden activations" (ICLR). Training: ``d * previous + (1 - d) * candidate``
    with ``d ~ Bernoulli(p)``; inference uses the expectation
    ``p * previous + (1 - p) * candidate``. Gradients reach both states, so
    zoneout, unlike dropout on the state, keeps the gradient path through time.

    Example::

        >>> h_next = zoneout(h, cell(x, h), p=0.1, seed=0)
    """
    p = validate_p(p)
    validate_input(candidate, "zoneout")
    if previous.shape != candidate.shape:
        raise ValueError(
            f"zoneout expects previous and candidate states of one shape, but got "
            f"{tuple(previous.shape)} and {tuple(candidate.shape)}"
        )
    if p == 0.0:
        return candidate
    if not training:
        return torch.lerp(candidate, previous, p)
    threshold, _, _ = keep_scale(p)
    update = keep_mask_like(candidate, (), threshold, 1.0, seed, offset, generator)
    # A selection, not a mix of products: a unit takes exactly one of the two
    # states, and an inf in the state it does not take cannot leak in as NaN.
    return torch.where(update != 0, candidate, previous)
