"""What rfprobe wrote inside a zarr store, and whether it is still whole.

Every store rfprobe writes (a pass's result, a study's study.zarr) gets a manifest, `MANIFEST`, at save time: the
sha256 of each file of the store. `problem(path)` rereads them, so a deleted, truncated or edited chunk is found
before a store is reused. `foreign_files(path)` lists what a zarr format-2 store does not consist of (a user's
notes put inside it): rfprobe replaces a store only when that list is empty, so it never deletes a user's file.
Hashing is by hand because zarr has no whole-store checksum; stores are small (kilobytes to a few megabytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

MANIFEST = ".rfprobe-sha256.json"
_GROUP_FILES = {".zgroup", ".zattrs", ".zmetadata"}
_ARRAY_FILES = {".zarray", ".zattrs"}
_CHUNK = re.compile(r"\d+(\.\d+)*")


def _walk(directory: Path, own: list[Path], foreign: list[Path], top: bool) -> None:
    """Sort the entries of a zarr v2 group `directory` into rfprobe's own (zarr metadata, arrays and their
    chunks, subgroups, the manifest at the `top` level) and foreign ones."""
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_file():
            (own if entry.name in _GROUP_FILES or top and entry.name == MANIFEST else foreign).append(entry)
        elif (entry / ".zgroup").is_file():
            _walk(entry, own, foreign, top=False)
        elif (entry / ".zarray").is_file():
            _array(entry, own, foreign, top=True)
        else:
            foreign.append(entry)


def _array(directory: Path, own: list[Path], foreign: list[Path], top: bool) -> None:
    """An array's metadata and chunk files (`0.1` or, with the `/` separator, nested digit folders)."""
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_file() and (_CHUNK.fullmatch(entry.name) or top and entry.name in _ARRAY_FILES):
            own.append(entry)
        elif entry.is_dir() and entry.name.isdigit():
            _array(entry, own, foreign, top=False)
        else:
            foreign.append(entry)


def files(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(own, foreign) files of the zarr store at `path`: own are what zarr and rfprobe write, foreign the rest
    (a foreign folder is listed once, not its contents)."""
    root = Path(path)
    own: list[Path] = []
    foreign: list[Path] = []
    _walk(root, own, foreign, top=True)
    return own, foreign


def foreign_files(path: str | os.PathLike) -> list[str]:
    """Paths (relative to the store) of everything inside the store that rfprobe did not write."""
    root = Path(path)
    return [str(p.relative_to(root)) for p in files(root)[1]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(path: str | os.PathLike) -> None:
    """Record the sha256 of every file of the store at `path` (called on the temporary copy before it is
    renamed into place, so a store in place always has its manifest)."""
    root = Path(path)
    own = [p for p in files(root)[0] if p.name != MANIFEST]
    digests = {str(p.relative_to(root)): _sha256(p) for p in own}
    (root / MANIFEST).write_text(json.dumps(digests, indent=0, sort_keys=True) + "\n")


def problem(path: str | os.PathLike) -> str | None:
    """None when every file the manifest lists is there with its recorded sha256; else what is wrong, in a
    few words (no manifest, a missing file, a damaged file)."""
    root = Path(path)
    try:
        digests = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return "it has no checksums (written by an older rfprobe, or not by rfprobe)"
    except (OSError, ValueError) as e:
        return f"its checksum file is unreadable ({type(e).__name__})"
    if not isinstance(digests, dict) or not digests:
        return "its checksum file is empty"
    for name, digest in digests.items():
        file = root / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} is damaged (its checksum differs)"
    return None
