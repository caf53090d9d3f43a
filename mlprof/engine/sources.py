"""Where a job's rank traces are: a directory, a glob, a list, or the same behind an fsspec URL.

Local paths are used as they are. An fsspec URL (``s3://bucket/job/``, ``gs://...``,
``file:///...``, ``memory://...``) is listed through fsspec on the client and each
file is fetched by the task that reads it, into a temporary folder on that worker,
under its own name (the rank may be in the name), and deleted after reading.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlprof.errors import BadInputError
from mlprof.trace.loader import TRACE_SUFFIXES, job_paths

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_COLLAPSED_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]{1,}):/(?!/)")
"""``pathlib.Path('s3://b/x')`` prints ``s3:/b/x``: the CLI's Path argument collapses the double slash."""
_GLOB = re.compile(r"[*?\[]")
CHUNK = 8 << 20


def normalise(source: str) -> str:
    """A URL whose ``//`` a ``Path`` collapsed gets it back; anything else is returned as is."""
    if not _URL.match(source) and _COLLAPSED_URL.match(source) and not os.path.exists(source):
        return _COLLAPSED_URL.sub(r"\1://", source, count=1)
    return source


def is_url(source: str) -> bool:
    return bool(_URL.match(source))


def is_job(source: str) -> bool:
    """Whether ``source`` names several rank files (a directory, a glob, a URL of a folder or glob)."""
    source = normalise(source)
    if is_url(source):
        return True
    if _GLOB.search(source) and not os.path.exists(source):
        return True
    return os.path.isdir(source)


def list_sources(source: str | list[str]) -> list[str]:
    """The rank files of a job, sorted by name; a list is taken as given."""
    if isinstance(source, list):
        if not source:
            raise BadInputError("no trace files given")
        return [normalise(s) for s in source]
    source = normalise(source)
    if is_url(source):
        return _list_url(source)
    if _GLOB.search(source) and not os.path.exists(source):
        files = sorted(p for p in glob.glob(source) if os.path.isfile(p))
        if not files:
            raise BadInputError(f"{source}: no file matches")
        return files
    return job_paths(Path(source))


def _list_url(url: str) -> list[str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if _GLOB.search(root):
            names = sorted(fs.glob(root))
        elif fs.isdir(root):
            names = sorted(
                p
                for p in fs.ls(root, detail=False)
                if p.endswith(TRACE_SUFFIXES) and not os.path.basename(p).startswith(".")
            )
        elif fs.exists(root):
            names = [root]
        else:
            raise BadInputError(f"{url}: no such file or directory")
    except BadInputError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise BadInputError(f"{url}: cannot list ({exc})") from None
    if not names:
        raise BadInputError(f"{url}: holds no trace files (*.json, *.json.gz)")
    protocol = url.split("://", 1)[0]
    return [n if is_url(n) else f"{protocol}://{n.lstrip('/') if protocol != 'file' else n}" for n in names]


@contextlib.contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path for ``source``: itself when local, else a fetched copy under its own name."""
    if not is_url(source) or source.startswith("file://"):
        yield Path(source[len("file://") :] if source.startswith("file://") else source)
        return
    import fsspec

    folder = tempfile.mkdtemp(prefix="mlprof-rank-")
    try:
        target = Path(folder) / os.path.basename(source.rstrip("/"))
        try:
            with fsspec.open(source, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{source}: cannot read ({exc})") from None
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)
