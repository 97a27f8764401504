"""Writing outputs so that nothing already on disk is lost: every write goes to a fresh temporary path that
rfprobe itself created beside the target (so cleaning up can only ever remove rfprobe's own files), and is
renamed into place only once complete. A temporary name says which host and process made it
(`.<target>.tmp-<host>-<pid>-<random>`), so the next write into the same folder removes the leftovers of a
killed process (`remove_stale_temporaries`) and nothing else."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]{8}")


def _prefix(path: Path) -> str:
    return f".{path.name}.tmp-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in `directory` that rfprobe made on this host in a process that
    is no longer alive (a run killed mid-write); returns what was removed. Another host's temporaries (a
    shared file system) and a live process's are left alone."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary file beside `path` (same suffix, so writers that go by the suffix work); when the
    block succeeds it replaces `path` in one `os.replace`; on error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path (not yet existing) inside a new temporary directory beside `path`; when the block succeeds
    it is renamed to `path`. An existing `path` is first moved into that temporary directory and deleted only
    after the new one is in place; if the second rename fails, the old one is moved back. So at every moment
    either the old or the new directory is at `path`, or (between the renames) the old one is recoverable
    inside the temporary directory, which is only removed after a success or a restore."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    scratch = Path(tempfile.mkdtemp(prefix=_prefix(path), dir=path.parent))
    new, old = scratch / "new", scratch / "old"
    restored = True
    try:
        yield new
        if path.exists() or path.is_symlink():
            path.rename(old)
        try:
            new.rename(path)
        except BaseException:
            if old.exists() or old.is_symlink():
                try:
                    old.rename(path)
                except OSError:
                    restored = False
            raise
    finally:
        if restored:
            shutil.rmtree(scratch, ignore_errors=True)
