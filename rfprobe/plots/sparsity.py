"""Figure of the `sparsity` Dataset: zero fraction per ReLU site across depth and dead-channel counts."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import numpy as np
import xarray as xr

from rfprobe.plots import checkpoint_colors

MARKERS = {"bn": "o", "add": "s", "other": "x"}


def _layers(ds: xr.Dataset, label) -> xr.Dataset:
    """One checkpoint's sites, without the NaN padding a stack of different architectures adds."""
    one = ds.sel(checkpoint=label)
    keep = np.isfinite(np.asarray(one["n_channels"].values, dtype=float))
    return one.isel(layer=np.flatnonzero(keep))


def sparsity_figure(ds: xr.Dataset, threshold: float = 0.01):
    """Top: each checkpoint's fraction of ReLU outputs exactly 0 per site against depth (marker = what
    feeds the ReLU). Bottom: dead channels per site, and (hatched) those of them whose feeding BN has
    |gamma| < `threshold` (the stored threshold nearest to it)."""
    labels = list(ds["checkpoint"].values)
    colors = checkpoint_colors(labels)
    t = float(ds["threshold"].sel(threshold=threshold, method="nearest"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, layout="constrained")
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        one = _layers(ds, label)
        depth = np.asarray(one["depth"].values, dtype=float)
        sources = np.asarray(one["source"].values)
        pooled = float(one["pooled_zero_fraction"])
        top.plot(depth, one["layer_zero_fraction"].values, color=colors[label], linewidth=1,
                 label=f"{label} (pooled {pooled:.1%}, {int(one['pooled_dead_count'])} dead)")
        for source, marker in MARKERS.items():
            where = sources == source
            if where.any():
                top.scatter(depth[where], one["layer_zero_fraction"].values[where], marker=marker, s=18,
                            color=colors[label])
        x = depth - 0.4 + (k + 0.5) * width
        bottom.bar(x, one["dead_count"].values, width=width, color=colors[label], alpha=0.5)
        small = np.nan_to_num(one["dead_small_gamma_count"].sel(threshold=t).values)
        bottom.bar(x, small, width=width, facecolor="none", edgecolor=colors[label], hatch="///")
    top.set_ylabel("fraction of outputs = 0")
    top.set_ylim(0, 1)
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="0.3", label=f"fed by {s}") for s, m in MARKERS.items()
               if (np.ravel(ds["source"].values) == s).any()]
    top.legend(handles=top.get_legend_handles_labels()[0] + handles, fontsize=8)
    bottom.set_ylabel("dead channels")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("ReLU site (forward order)")
    bottom.legend(handles=[Patch(facecolor="0.6", label="dead"),
                           Patch(facecolor="none", edgecolor="0.3", hatch="///", label=f"dead and |gamma| < {t:g}")],
                  fontsize=8)
    first = _layers(ds, labels[0])
    bottom.set_xticks(np.asarray(first["depth"].values, dtype=float), [str(n) for n in first["layer"].values],
                      rotation=90, fontsize=7)
    fig.suptitle(f"Activation sparsity ({ds.attrs.get('dataset', '')} {ds.attrs.get('split', '')}, "
                 f"{ds.attrs.get('n_examples', '')} examples)")
    return fig
