"""Paper protocols: ``dropkit lab reproduce NAME`` runs one, beside the paper's numbers.

Each protocol is one file in this package that defines a module-level
``PROTOCOL = Protocol(...)`` (see :class:`~dropkit.lab.reproduce._base.Protocol`):

* ``name``, ``citation``, ``description``: what ``--list`` prints;
* ``paper_numbers``: the :class:`PaperNumber` rows printed beside ours;
* ``default_epochs``, ``default_seeds``, ``budget_unit``, ``budget_note``: the
  default budget (it must fit a 2-core machine) and what ``--epochs`` scales;
* ``check_data(data_dir)``: raise :class:`ReproduceError` naming the missing
  files; called before the store is opened, so bad data writes nothing;
* ``run(store, data_dir, epochs, seeds, progress) -> ProtocolResult``: train or
  resume every run in the :class:`~dropkit.lab.store.RunStore` (one experiment,
  runs keyed by arm and seed, each with its exact config) and return the tables,
  the :class:`Comparison` verdicts and notes that the CLI prints as Markdown.

Helpers for a new protocol live in ``_base``: :func:`train_resumable` (per-epoch
checkpoints in the store, resume after a kill), :func:`paired_comparison` and
:func:`judge` (paired t-test over seeds, 95 % interval, Holm's correction over
the protocol's comparisons, ties inside one test sample, "not measured" under
3 seeds), :func:`check_budget`.

Adding a protocol is one file plus one line in :data:`PROTOCOLS` below.
"""

from __future__ import annotations

from dropkit.lab.reproduce import (
    gal2016_uci,
    gal2017_active_mnist,
    srivastava2014_mnist,
    zaremba2014_ptb,
)
from dropkit.lab.reproduce._base import (
    ALPHA,
    MIN_SEEDS,
    Comparison,
    PaperNumber,
    Protocol,
    ProtocolResult,
    ReproduceError,
    judge,
    paired_comparison,
    train_resumable,
)

__all__ = [
    "ALPHA",
    "MIN_SEEDS",
    "PROTOCOLS",
    "Comparison",
    "PaperNumber",
    "Protocol",
    "ProtocolResult",
    "ReproduceError",
    "get_protocol",
    "judge",
    "paired_comparison",
    "train_resumable",
]

#: The registry: name -> protocol, in the order ``--list`` shows them.
PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol
    for protocol in (
        srivastava2014_mnist.PROTOCOL,
        zaremba2014_ptb.PROTOCOL,
        gal2016_uci.PROTOCOL,
        gal2017_active_mnist.PROTOCOL,
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``, or :class:`ReproduceError` listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ReproduceError(
            f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)} "
            "(see `dropkit lab reproduce --list`)"
        ) from None
