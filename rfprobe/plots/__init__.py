"""Figures drawn from result Datasets only (never from a model). One module per pass; shared helpers here.
Importing this picks no matplotlib backend (a notebook keeps its own); the command line uses Agg
(rfprobe.entrypoint)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.figure
import matplotlib.pyplot as plt

from rfprobe.atomic import atomic_file
from rfprobe.errors import RfprobeError
from rfprobe.results import check_writable


FIGURE_FORMATS = matplotlib.figure.Figure().canvas.get_supported_filetypes()
"""suffix (no dot) -> description, for every format a figure's canvas writes"""


def check_plot_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse (one line) a `--plot` whose suffix matplotlib cannot write, and an existing path unless
    `overwrite` and it is a plain file with that suffix (so a directory of the user's is never replaced)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise RfprobeError(f"--plot {path}: cannot write a figure with suffix {path.suffix or '(none)'!r}; "
                           f"use one of {', '.join('.' + s for s in sorted(FIGURE_FORMATS))}")
    check_writable(path, overwrite, replaceable=lambda p: p.is_file() and not p.is_symlink(),
                   what="a figure file")
    return path


def save_figure(fig, path: str | os.PathLike, *, overwrite: bool = False, dpi: int = 130) -> Path:
    """Save `fig` to `path` atomically (rfprobe.atomic; the format follows the suffix) and close it."""
    path = check_plot_path(path, overwrite)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def checkpoint_colors(labels) -> dict[str, tuple]:
    """One stable colour per checkpoint label (tab10 order)."""
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def figure(ds):
    """The figure of the pass that wrote `ds` (`ds.attrs["rfprobe_pass"]`, looked up in
    rfprobe.passes.REGISTRY), drawn from the Dataset alone."""
    from rfprobe.passes import REGISTRY

    name = ds.attrs.get("rfprobe_pass")
    if name not in REGISTRY:
        raise RfprobeError(f"not an rfprobe result with a figure (its attrs name the pass {name!r})")
    return REGISTRY[name].figure(ds)
