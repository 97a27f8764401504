"""The run directory: init.pt, epoch_XXX.pt, final.pt, metrics.jsonl, and last.pt (resume state while the
run is unfinished). Every file is written to a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rfprobe.errors import RfprobeError

RUN_FILES = ("init.pt", "final.pt", "last.pt", "metrics.jsonl")


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES) or any(path.glob("epoch_*.pt"))


def check(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an existing non-empty directory unless --resume or --overwrite; --overwrite only deletes a
    directory that holds a run (never an unrelated folder). Read-only: safe on every rank."""
    if path.exists() and not path.is_dir():
        raise RfprobeError(f"--out {path} is a file, not a run directory")
    if not path.exists() or not any(path.iterdir()) or resume:
        return
    if not overwrite:
        raise RfprobeError(f"run directory {path} exists; pass --resume to continue it or --overwrite to start again")
    if not is_run_dir(path):
        raise RfprobeError(f"--overwrite refused: {path} is not empty and holds no run (no init.pt / metrics.jsonl)")


def reset(path: Path, overwrite: bool) -> None:
    """Create the directory; with --overwrite, delete the previous run in it first; drop stale temp files."""
    if overwrite and path.exists() and is_run_dir(path):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.tmp-*"):
        stale.unlink()


def resume_point(path: Path) -> Path | None:
    """The file to continue from: final.pt when the run is complete, else last.pt, else init.pt, else None."""
    for name in ("final.pt", "last.pt", "init.pt"):
        if (path / name).exists():
            return path / name
    return None


def write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl, one JSON object per epoch (epoch 0 = the initial model), rewritten atomically."""
    target = path / "metrics.jsonl"
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, target)


def epoch_file(path: Path, epoch: int) -> Path:
    return path / f"epoch_{epoch:03d}.pt"
