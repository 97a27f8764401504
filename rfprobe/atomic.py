"""Writing outputs so that nothing already on disk is lost: every write goes to a fresh temporary path that
rfprobe itself created beside the target (so cleaning up can only ever remove rfprobe's own files), and is
renamed into place only once complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary file beside `path` (same suffix, so writers that go by the suffix work); when the
    block succeeds it replaces `path` in one `os.replace`; on error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
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
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
