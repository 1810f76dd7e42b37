"""The one error type of the lab's exit-2 failures.

A :class:`LabError` is bad input the user can fix: a damaged or missing data file,
a bad flag value, a store that cannot be opened. Its message names what failed
(the value, the file and its byte counts, the store) and what was expected; the
CLI prints it on one line and exits 2 without writing anything. Anything else
that escapes a command is a bug and keeps its traceback.

Subclasses say which layer failed (:class:`dropkit.lab.datasets.DataFormatError`,
:class:`dropkit.lab.tasks.MissingDataError`, ...) so API callers can catch narrowly.
"""

from __future__ import annotations

__all__ = ["LabError"]


class LabError(Exception):
    """Bad input to the lab; the message names the value or file and what was expected."""
