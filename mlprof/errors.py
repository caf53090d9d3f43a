"""Errors a user can act on.

Every error that reaches the command line is an :class:`MlprofError`: the CLI prints
its message as one line on stderr and exits with its ``exit_code``, never with a
traceback. Anything else escaping is a bug in mlprof.
"""

from __future__ import annotations


class MlprofError(Exception):
    """Base class for errors that are shown to the user as one line."""

    exit_code: int = 2


class BadInputError(MlprofError):
    """The input path or file cannot be read as a trace (exit code 2)."""


class UsageError(MlprofError):
    """The command line asks for something that does not exist (exit code 2)."""
