"""One clear line for a trace path that leads to no readable file, the same from every command.

Standard library only: ``compare`` and ``ingest`` check their inputs with it before anything is read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mlprof.errors import BadInputError

_KINDS = ((stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_found(path: Path) -> BadInputError:
    """The error for a path that leads to no file, saying what is wrong where it is more than plain absence:
    ``-`` (standard input), a symbolic link loop, a link to nothing."""
    if str(path) == "-":
        return BadInputError("-: mlprof reads a trace from a file, not from standard input; save it and pass its path")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return BadInputError(f"{path}: too many levels of symbolic links")
        if os.path.islink(path):
            return BadInputError(f"{path}: a symbolic link to a file that does not exist")
    except ValueError:  # an embedded NUL
        pass
    return BadInputError(f"{path}: no such file or directory")


def not_regular(path: Path, mode: int) -> BadInputError:
    """The error for a path that is neither a regular file nor a directory. ``<(zcat trace.json.gz)`` is a pipe:
    the readers cut, map and re-open a trace by its path, which a stream does not allow (and reading a device
    such as ``/dev/zero`` would never end)."""
    kind = next((name for test, name in _KINDS if test(mode)), "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return BadInputError(f"{path}: {kind}, not a trace file; save the trace to a file and pass its path")
