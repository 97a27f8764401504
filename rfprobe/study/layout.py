"""What a study directory holds and how its parts are named (docs/studies.md)."""

from __future__ import annotations

from pathlib import Path


STUDY_COORDS = ("run", "mode", "arch", "depth", "width", "seed", "epoch", "dataset")
"""coordinates on `checkpoint` in every group of study.zarr: the network's depth and width (from the
architecture name), the training seed, epoch and dataset; a pass's per-layer `depth` (a BN's position in
forward order) is `layer_depth` there (`as_result` gives a group back in its pass's own schema)"""

STUDY_FILES = ("runs", "study.zarr", "trajectory.png", "report.html", "figures")
"""what a study directory holds: rfprobe compare, report and plot write these, and nothing else"""


def store_path(out: Path, label: str, pass_name: str) -> Path:
    """DIR/runs/<label>/<pass>.zarr: one pass on one checkpoint."""
    return out / "runs" / label / f"{pass_name}.zarr"


def record_file(out: Path, label: str) -> Path:
    """DIR/runs/<label>/checkpoint.json: a checkpoint's provenance and study coordinates."""
    return out / "runs" / label / "checkpoint.json"
