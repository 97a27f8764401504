"""The five-line summary of a study (compare, report), from the passes' headline numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import xarray as xr

from rfprobe.passes import REGISTRY
from rfprobe.study.merge import last_checkpoints


def summary(tree: xr.DataTree) -> list[str]:
    """At most five lines: what the study holds, then per trainable mode (each run's latest checkpoint)
    accuracy (mean over the mode's runs), small-|gamma| and dead ReLU fractions (channels pooled over the
    mode's runs, each channel weighing one, so nets of different widths are not averaged as equals), and
    pruning vs random."""
    any_group = next(iter(tree.children.values())).to_dataset()
    finals = last_checkpoints(any_group)
    modes = {run: str(any_group["mode"].sel(checkpoint=label).values) for run, label in finals.items()}
    runs = (', '.join(f'{r}: {m}' for r, m in modes.items()) if len(modes) <= 8 else
            ', '.join(f"{m}: {n} runs" for m, n in Counter(modes.values()).items()))
    lines = [f"{any_group.sizes['checkpoint']} checkpoints of {len(finals)} runs ({runs}); "
             f"passes {', '.join(n for n in REGISTRY if n in tree.children)}"]

    def by_mode(group: str, value) -> str | None:
        """Per mode: sum of numerators / sum of denominators over the mode's runs, from each run's headline
        row (`value(row)` gives both: a fraction of channels pools the channels of all the runs, each
        channel weighing one; an accuracy is (accuracy, 1), a plain mean over runs)."""
        if group not in tree.children:
            return None
        rows = REGISTRY[group].headline(tree[group].to_dataset().sel(checkpoint=list(finals.values())))
        per_mode: dict[str, list[tuple[float, float]]] = {}
        for run, label in finals.items():
            per_mode.setdefault(modes[run], []).append(tuple(float(v) for v in value(rows[label])))
        return ", ".join(f"{m} {100 * sum(n for n, _ in v) / sum(d for _, d in v):.1f}%" for m, v in per_mode.items())

    for text, group, value in (
            ("accuracy", "sparsity", lambda row: (row["accuracy"], 1)),
            ("BN channels with |gamma| < 0.01, pooled over each mode's channels", "dead",
             lambda row: (row["all"]["dead_n"].get("0.01", np.nan), row["all"]["n_channels"])),
            ("dead ReLU channels, pooled", "sparsity", lambda row: (row["dead"], row["channels"])),
            ("accuracy with the small-|gamma| channels pruned", "ablate",
             lambda row: (row["variants"]["pruned"]["accuracy"], 1))):
        cells = by_mode(group, value)
        if cells is not None:
            lines.append(f"{text} (latest epoch): {cells}")
    if "ablate" in tree.children:
        cells = by_mode("ablate", lambda row: (row["variants"]["random"]["accuracy"], 1))
        lines[-1] += f"; as many random channels: {cells}"
    return lines[:5]
