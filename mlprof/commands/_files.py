"""Where a command writes: never over or into its inputs, and a failed write is one error line.

Shared by every command with ``-o``, so the guard cannot drift between them. Files are
compared by device and inode (a hard link or symlink to the input is the input), and
written through :mod:`mlprof.safe_write` (a temporary file renamed into place; character
devices and FIFOs written as streams, never replaced).

``force``: without it an existing regular file is not overwritten (the ``--force`` flag
of each command passes it). ``/dev/null``, ``/dev/stdout`` and FIFOs are streams, not
files a user keeps, so they never need it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mlprof.errors import MlprofError, UsageError
from mlprof.safe_write import inside, is_stream, same_file, write_output


def same_or_inside(output: Path, path: Path) -> bool:
    """True when ``output`` is the file ``path`` or lies inside the folder ``path`` (by device and inode)."""
    return same_file(output, path) or inside(output, path)


def refuse_to_overwrite(output: Path | None, inputs: list[Path], *, force: bool = True) -> None:
    """A usage error when ``output`` would write over or into one of ``inputs``, or over an existing
    file without ``force`` (nothing is read yet).

    ``force`` defaults to True until every command has its ``--force`` flag; a command
    with the flag passes its value.
    """
    if output is None:
        return
    for source in inputs:
        if same_or_inside(output, source):
            raise UsageError(f"-o {output}: would write over or into the input {source}; choose another path")
    if not force and not is_stream(output) and _existing_file(output):
        raise UsageError(f"-o {output}: the file exists; pass --force to overwrite it")


def _existing_file(output: Path) -> bool:
    """An existing file (not a folder); an unusable path is left to the writer to report."""
    try:
        return output.exists() and not output.is_dir()
    except (OSError, ValueError):
        return False


def write_text(output: Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (or its pieces, as they come) to ``output`` (temp file renamed into place, or a stream); a
    failure is one error line."""
    write_output(output, text)


def make_folder(output: Path) -> None:
    """Create the output folder (and its parents); a failure is one error line."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MlprofError(f"{output}: cannot create the folder ({exc.strerror or exc})") from None
