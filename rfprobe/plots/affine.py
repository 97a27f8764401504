"""Figures of the `affine` Dataset: gamma and beta histograms per stage (checkpoints overlaid) and gamma
across depth."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from rfprobe.plots import checkpoint_colors


def layer_view(ds: xr.Dataset, label) -> xr.Dataset:
    """One checkpoint's slice, restricted to the layers it has (several architectures stack NaN-padded);
    `stage`, `depth`, `role` are then plain 1-D arrays whether they were coordinates or variables."""
    one = ds.sel(checkpoint=label)
    return one.isel(layer=np.flatnonzero(np.isfinite(np.asarray(one["n_channels"].values, float))))


def _stages(ds: xr.Dataset) -> list[int]:
    return sorted({int(s) for s in np.ravel(ds["stage"].values) if np.isfinite(float(s))})


def affine_figure(ds: xr.Dataset):
    """Row 1: gamma histogram per stage; row 2: beta histogram per stage (fraction of the stage's
    channels per bin, one step line per checkpoint); row 3: every channel's gamma against BN depth, with
    the per-layer median as a line."""
    labels = list(ds["checkpoint"].values)
    colors = checkpoint_colors(labels)
    stages = _stages(ds)
    fig = plt.figure(figsize=(3.6 * max(len(stages), 2), 9.5), layout="constrained")
    grid = fig.add_gridspec(3, len(stages))
    for row, name in enumerate(("gamma", "beta")):
        edges = ds[f"{name}_bin_edges"].values
        for col, stage in enumerate(stages):
            ax = fig.add_subplot(grid[row, col])
            for label in labels:
                one = layer_view(ds, label)
                hist = one[f"{name}_hist"].values[one["stage"].values == stage].sum(axis=0)
                if hist.sum() > 0:
                    ax.stairs(hist / hist.sum(), edges, color=colors[label], label=str(label), linewidth=1.4)
            ax.axvline(0, color="0.6", linewidth=0.6)
            ax.set_title(f"{name}, stage {stage}", fontsize=10)
            ax.set_xlabel(name)
            if col == 0:
                ax.set_ylabel("fraction of channels")
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[2, :])
    offsets = np.linspace(-0.2, 0.2, len(labels)) if len(labels) > 1 else [0.0]
    for label, offset in zip(labels, offsets):
        one = layer_view(ds, label)
        depth = one["depth"].values.astype(float)
        gamma = one["gamma"].values
        xs = np.broadcast_to(depth[:, None] + offset, gamma.shape)
        ax.scatter(xs[np.isfinite(gamma)], gamma[np.isfinite(gamma)], s=4, alpha=0.35, color=colors[label], linewidths=0)
        ax.plot(depth + offset, np.nanmedian(gamma, axis=1), color=colors[label], label=f"{label} (median)")
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.set_xlabel("BN layer (forward order)")
    ax.set_ylabel("gamma per channel")
    ax.legend(fontsize=8)
    fig.suptitle("BatchNorm affine parameters")
    return fig
