"""Where a command writes: never over or into its inputs, and a failed write is one error line.

Shared by every command with ``-o``, so the guard cannot drift between them.
"""

from __future__ import annotations

from pathlib import Path

from mlprof.errors import MlprofError, UsageError


def same_or_inside(output: Path, path: Path) -> bool:
    """True when ``output`` is ``path`` or lies inside the folder ``path``."""
    try:
        out, src = output.resolve(), path.resolve()
        return out == src or (src.is_dir() and src in out.parents)
    except (OSError, RuntimeError):
        return False  # an unusable path: the reader or the writer reports it


def refuse_to_overwrite(output: Path | None, inputs: list[Path]) -> None:
    """A usage error when ``output`` would write over or into one of ``inputs`` (nothing is read yet)."""
    if output is None:
        return
    for source in inputs:
        if same_or_inside(output, source):
            raise UsageError(f"-o {output}: would write over or into the input {source}; choose another path")


def write_text(output: Path, text: str) -> None:
    """Write ``text`` to ``output``; a failure (missing folder, no space, a directory) is one error line."""
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MlprofError(f"{output}: cannot write ({exc.strerror or exc})") from None


def make_folder(output: Path) -> None:
    """Create the output folder (and its parents); a failure is one error line."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MlprofError(f"{output}: cannot create the folder ({exc.strerror or exc})") from None
