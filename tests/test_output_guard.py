"""``-o`` never loses a user's file: inputs compared by device and inode, atomic writes, devices kept as devices."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from mlprof.cli import main
from mlprof.commands._files import refuse_to_overwrite
from mlprof.errors import UsageError
from mlprof.safe_write import open_output, write_output

from conftest import SAMPLES

TINY = SAMPLES / "cpu_tiny_training.pt.trace.json.gz"


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "trace.json.gz"
    path.parent.mkdir()
    shutil.copy(TINY, path)
    return path


def _commands(trace: Path, out: Path) -> list[list[str]]:
    return [
        ["analyze", str(trace), "-o", str(out)],
        ["analyze", str(trace), "-f", "json", "-o", str(out)],
        ["report", str(trace), "-o", str(out)],
        ["compare", str(trace), str(TINY), "-o", str(out)],
        ["annotate", str(trace), "-o", str(out)],
    ]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_link_to_the_input_is_the_input(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    out = tmp_path / "elsewhere" / "report.json.gz"
    out.parent.mkdir()
    os.link(trace, out) if link == "hard" else out.symlink_to(trace)
    before = trace.read_bytes()
    for argv in _commands(trace, out):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "would write over or into the input" in err and err.count("\n") == 1, err
    assert trace.read_bytes() == before
    assert out.is_symlink() == (link == "symbolic")


def test_output_inside_an_input_folder_by_inode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(TINY, folder / "rank0.pt.trace.json.gz")
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    assert main(["analyze", str(folder), "-o", str(alias / "sub" / ".." / "report.txt")]) == 2
    assert "would write over or into the input" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["rank0.pt.trace.json.gz"]


def _char_device(path: Path) -> bool:
    """A null device node (1, 3) at ``path``; False where this process may not make one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def test_devices_and_fifos_are_written_as_streams(trace: Path, tmp_path: Path) -> None:
    """A private null device node stands in for /dev/null: replacing it would not harm the machine."""
    null = tmp_path / "null"
    have_device = _char_device(null)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main(["analyze", str(trace), "-f", "json", "-o", str(fifo)]) == 0
    reader.join(30)
    assert json.loads(got[0])["trace"]["events"] > 0  # the report went through the pipe
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    if not have_device:
        pytest.skip("cannot create a device node here (no CAP_MKNOD); the FIFO case ran")
    for argv in (
        ["annotate", str(trace), "-o", str(null)],
        ["analyze", str(trace), "-o", str(null)],
        ["report", str(trace), "-o", str(null)],
    ):
        assert main(argv) == 0, argv
        assert stat.S_ISCHR(null.stat().st_mode), argv  # still the device, not a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "in", "null"]  # no temporary files left


def test_new_files_follow_the_umask_and_existing_keep_their_mode(trace: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["annotate", str(trace), "-o", str(tmp_path / "a.json.gz")]) == 0  # was 0600 whatever the umask
        assert (tmp_path / "a.json.gz").stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.md"
        kept.write_text("old")
        kept.chmod(0o600)
        assert main(["analyze", str(trace), "-f", "markdown", "-o", str(kept)]) == 2  # exists: needs --force
        assert kept.read_text() == "old"
        assert main(["analyze", str(trace), "-f", "markdown", "-o", str(kept), "--force"]) == 0
        assert kept.stat().st_mode & 0o777 == 0o600 and kept.read_text().startswith("## mlprof")
    finally:
        os.umask(old)
    doc = json.loads(gzip.decompress((tmp_path / "a.json.gz").read_bytes()))
    assert any(e.get("cat") == "mlprof" or "mlprof" in json.dumps(e) for e in doc["traceEvents"])


def test_interrupted_write_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    out.write_text("the user's report")
    with pytest.raises(KeyboardInterrupt), open_output(out) as fh:
        fh.write(b"half a rep")
        raise KeyboardInterrupt
    assert out.read_text() == "the user's report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]
    link = tmp_path / "link.txt"
    link.symlink_to(out)
    write_output(link, "new")
    assert link.is_symlink() and out.read_text() == "new"  # the link's target is written, the link kept


def test_force_is_needed_to_replace_an_existing_file(trace: Path, tmp_path: Path) -> None:
    existing = tmp_path / "r.txt"
    existing.write_text("x")
    with pytest.raises(UsageError, match="pass --force"):
        refuse_to_overwrite(existing, [trace], force=False)
    refuse_to_overwrite(existing, [trace], force=True)
    refuse_to_overwrite(tmp_path / "new.txt", [trace], force=False)
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    refuse_to_overwrite(fifo, [trace], force=False)  # a stream is not a file the user keeps
    with pytest.raises(UsageError, match="would write over"):
        refuse_to_overwrite(trace, [trace], force=True)


def test_folder_as_output_is_one_line(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(trace), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a folder; name a file to write" in err and err.count("\n") == 1


def test_text_written_in_chunks_is_the_text_encoded_whole(tmp_path):
    """write_output encodes text a chunk at a time; the bytes are those of encoding it at once."""
    from mlprof.safe_write import _CHUNK, write_output

    text = ("é\u2028x\ud800" * (_CHUNK // 2)) + "😀" * 3 + "\n"  # crosses chunk boundaries; a lone surrogate
    out = tmp_path / "report.json"
    write_output(out, text)
    assert out.read_bytes() == text.encode("utf-8", "replace")
    assert out.read_bytes().count(b"?") == _CHUNK // 2
