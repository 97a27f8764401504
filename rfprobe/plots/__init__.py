"""Figures drawn from result Datasets only (never from a model). One module per pass; shared helpers here."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rfprobe.results import check_writable  # noqa: E402


def save_figure(fig, path: str | os.PathLike, *, overwrite: bool = False, dpi: int = 130) -> Path:
    """Save `fig` to `path` atomically (temp file + rename; the format follows the suffix) and close it."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def checkpoint_colors(labels) -> dict[str, tuple]:
    """One stable colour per checkpoint label (tab10 order)."""
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}
