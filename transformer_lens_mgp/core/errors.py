"""The package's own errors: a wrong input or setting, said with how to fix it.

They subclass the built-in error a caller would expect (``ValueError``, ``TypeError``,
``FileNotFoundError``), so ``except ValueError`` keeps working, and share ``UsageError`` so
that the command line can tell a user's mistake from a bug.
"""

from __future__ import annotations


class UsageError(ValueError):
    """An argument, file or setting is wrong; the message says what and how to fix it."""


class UsageTypeError(UsageError, TypeError):
    """An argument of the wrong kind (a list where a dataset is expected, ...)."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file the call needs is not there."""


class TrainingDivergedError(RuntimeError):
    """The loss stopped being a finite number."""
