"""Figure of the `dead` Dataset: fraction of channels with |gamma| < t against BN depth, per checkpoint."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from rfprobe.plots import checkpoint_colors
from rfprobe.plots.affine import layer_view

MARKERS = {"relu": "o", "residual": "s", "shortcut": "^", "other": "x"}


def dead_figure(ds: xr.Dataset):
    """One panel per threshold: each checkpoint's per-layer dead fraction against depth (marker = the
    BN's role), its pooled fraction over all BNs in the legend."""
    labels = list(ds["checkpoint"].values)
    colors = checkpoint_colors(labels)
    thresholds = ds["threshold"].values
    ncols = min(len(thresholds), 4)
    nrows = -(-len(thresholds) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows + 0.6), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[len(thresholds):]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, thresholds):
        for label in labels:
            one = layer_view(ds, label).sel(threshold=t)
            depth, frac, roles = one["depth"].values.astype(float), one["frac_dead"].values, one["role"].values
            pooled = float(one["pooled_frac_dead"].sel(pool="all"))
            ax.plot(depth, frac, color=colors[label], linewidth=1, label=f"{label} (pooled {pooled:.1%})")
            for role, marker in MARKERS.items():
                where = roles == role
                if where.any():
                    ax.scatter(depth[where], frac[where], marker=marker, s=18, color=colors[label])
        ax.set_title(f"|gamma| < {t:g}", fontsize=10)
        ax.set_xlabel("BN layer (forward order)")
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of channels")
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="0.3", label=r) for r, m in MARKERS.items()
               if (np.ravel(ds["role"].values) == r).any()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, title="BN role")
    fig.suptitle("Dead BN channels by depth")
    return fig
