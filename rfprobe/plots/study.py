"""Study figures drawn from study.zarr (an xarray DataTree) alone: key numbers against training epoch."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rfprobe.plots import checkpoint_colors, plt

TRAJECTORY_PANELS = (
    ("dead", "pooled_frac_dead", "fraction of BN channels with |gamma| < {t}"),
    ("sparsity", "pooled_dead_fraction", "dead ReLU channels (never > 0)"),
    ("sparsity", "accuracy", "accuracy"),
)


def trajectory_figure(tree: xr.DataTree, thresholds=(0.01, 0.1)):
    """Per run (colour by mode, one line per run), against epoch: the small-|gamma| fraction (dead pass,
    all BNs) at each of `thresholds` present, the dead-channel fraction and the accuracy (sparsity pass).
    None when no run has two epochs or neither group is in the study."""
    panels = []
    for group, var, title in TRAJECTORY_PANELS:
        if group not in tree.children:
            continue
        ds = tree[group].to_dataset()
        if group == "dead":
            for t in ds["threshold"].values:
                if any(np.isclose(t, x) for x in thresholds):
                    panels.append((ds[var].sel(pool="all", threshold=t), title.format(t=f"{t:g}"), ds))
        else:
            panels.append((ds[var], title, ds))
    if not panels:
        return None
    runs = [str(r) for r in panels[0][2]["run"].values]
    if max((runs.count(r) for r in set(runs)), default=0) < 2:
        return None
    modes = list(dict.fromkeys(str(m) for m in panels[0][2]["mode"].values))
    colors = checkpoint_colors(modes)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, (values, title, ds) in zip(axes[0], panels):
        for run in dict.fromkeys(str(r) for r in ds["run"].values):
            members = ds["run"].values == run
            epochs = ds["epoch"].values[members].astype(float)
            order = np.argsort(epochs)
            mode = str(ds["mode"].values[members][0])
            ax.plot(epochs[order], np.asarray(values.values, float)[members][order], marker=".", color=colors[mode],
                    label=f"{run} ({mode})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Over training")
    return fig
