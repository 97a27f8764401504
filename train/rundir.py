"""The run directory: init.pt, epoch_XXX.pt, final.pt, metrics.jsonl, config.toml (the resolved settings),
and last.pt (resume state while the run is unfinished). Every file is written to a temporary name and renamed
into place; --overwrite deletes only these files, never anything else in the directory."""

from __future__ import annotations

import json
from pathlib import Path

from rfprobe.atomic import atomic_file, remove_stale_temporaries
from rfprobe.errors import RfprobeError
from rfprobe.results import check_directory_writable

RUN_FILES = ("init.pt", "final.pt", "last.pt", "metrics.jsonl")
CONFIG_FILE = "config.toml"


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES) or any(path.glob("epoch_*.pt"))


def check(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an existing non-empty directory unless --resume or --overwrite; --overwrite only deletes a
    directory that holds a run (never an unrelated folder). Read-only: safe on every rank."""
    if path.exists() and not path.is_dir():
        raise RfprobeError(f"--out {path} is a file, not a run directory")
    check_directory_writable(path, "--out")
    if not path.exists() or not any(path.iterdir()) or resume:
        return
    if not overwrite:
        raise RfprobeError(f"run directory {path} exists; pass --resume to continue it or --overwrite to start again")
    if not is_run_dir(path):
        raise RfprobeError(f"--overwrite refused: {path} is not empty and holds no run (no init.pt / metrics.jsonl)")


def run_files(path: Path) -> list[Path]:
    """The files of a run that the trainer wrote (and --overwrite may delete)."""
    named = [path / name for name in (*RUN_FILES, CONFIG_FILE)]
    return [p for p in named if p.is_file()] + sorted(p for p in path.glob("epoch_*.pt") if p.is_file())


def reset(path: Path, overwrite: bool) -> None:
    """Create the directory; with --overwrite, delete the previous run's files in it first (only those)."""
    if overwrite and path.exists() and is_run_dir(path):
        for file in run_files(path):
            file.unlink()
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)


def write_config(path: Path, text: str) -> None:
    """config.toml: the run's resolved settings (`python -m train --config` reads it back)."""
    with atomic_file(path / CONFIG_FILE) as tmp:
        tmp.write_text(text)


def resume_point(path: Path) -> Path | None:
    """The file to continue from: final.pt when the run is complete, else last.pt, else init.pt, else None."""
    for name in ("final.pt", "last.pt", "init.pt"):
        if (path / name).exists():
            return path / name
    return None


def write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl, one JSON object per epoch (epoch 0 = the initial model), rewritten atomically."""
    with atomic_file(path / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in history))


def epoch_file(path: Path, epoch: int) -> Path:
    return path / f"epoch_{epoch:03d}.pt"
