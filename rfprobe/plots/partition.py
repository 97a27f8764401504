"""Figures of a `partition` result: breakpoint density, nearest-boundary distances per layer, the 2-D slice."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap

from rfprobe.plots import checkpoint_colors


def draw_slice(ax, ds: xr.Dataset, checkpoint: str, title: str | None = None) -> None:
    """The exact partition of the slice plane: regions in random colours, their edges, the data points."""
    one = ds.sel(checkpoint=checkpoint)
    raster = one["slice_raster"].values
    box = one["slice_box"].values
    n = int(max(raster.max() + 1, 1))
    colours = np.random.default_rng(0).uniform(0.35, 0.95, (n, 3))
    shown = np.where(raster >= 0, raster, 0)
    image = colours[shown]
    image[raster < 0] = 1.0
    ax.imshow(image, origin="lower", extent=tuple(box), aspect="auto", interpolation="nearest")
    edges = one["slice_edges"].values
    edges = edges[np.isfinite(edges).all(axis=(1, 2))]
    ax.add_collection(LineCollection(edges, colors="k", linewidths=0.3, alpha=0.8))
    points = one["slice_points"].values
    labels = one["slice_point_label"].values
    ok = np.isfinite(points).all(1)
    ax.scatter(points[ok, 0], points[ok, 1], c=labels[ok], cmap=ListedColormap(["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]),
               s=4 if ok.sum() > 10 else 30, edgecolors="none" if ok.sum() > 10 else "k", zorder=3)
    complete = "" if int(one["slice_complete"]) else " (stopped at the cap; zoomed on them)"
    if complete and len(edges):
        lo, hi = edges.reshape(-1, 2).min(0), edges.reshape(-1, 2).max(0)
        pad = 0.05 * (hi - lo).max()
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
    else:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    ax.set_title(title or f"{checkpoint}: {int(one['slice_regions'])} regions{complete}", fontsize=9)


def partition_figure(ds: xr.Dataset):
    """Four panels: breakpoints per unit length by segment kind; per-layer nearest-boundary distances
    (Hutchinson, all points; exact points marked); per-layer unit distance / data spread and jitter ratio;
    the 2-D slice of the first checkpoint."""
    labels = [str(c) for c in ds["checkpoint"].values]
    colors = checkpoint_colors(labels)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    if "breakpoint_density" in ds:
        kinds = [str(k) for k in ds["segment_kind"].values]
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            ax.bar(np.arange(len(kinds)) + i * width, ds["breakpoint_density"].sel(checkpoint=label).values, width,
                   color=colors[label], label=label)
        ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds)
        ax.set_ylabel("breakpoints per unit length")
        ax.legend(fontsize=7)
    ax.set_title("exact region walk", fontsize=9)

    ax = axes[0, 1]
    if "hutchinson_distance_layer" in ds:
        first = ds.sel(checkpoint=labels[0])
        cmap = plt.get_cmap("viridis")
        n_layers = first.sizes["layer"]
        values = np.log10(first["hutchinson_distance_layer"].values)
        finite = values[np.isfinite(values)]
        bins = np.linspace(finite.min(), finite.max(), 40) if finite.size else 10
        for j, layer in enumerate(first["layer"].values):
            column = values[:, j]
            column = column[np.isfinite(column)]
            if column.size:
                ax.hist(column, bins=bins, histtype="step", color=cmap(j / max(n_layers - 1, 1)),
                        label=str(layer) if n_layers <= 8 else None)
        if "exact_distance" in first:
            for d in np.log10(first["exact_distance"].values):
                ax.axvline(d, color="k", lw=0.6, ls=":")
        ax.set_xlabel("log10 distance to the nearest boundary of the layer (input space)")
        ax.set_ylabel("points")
        if n_layers <= 8:
            ax.legend(fontsize=6)
        ax.set_title(f"{labels[0]}: per layer (Hutchinson); dotted: exact overall", fontsize=9)

    ax = axes[1, 0]
    for label in labels:
        one = ds.sel(checkpoint=label)
        depth = np.arange(one.sizes["layer"])
        for var, style, what in (("unit_distance_ratio", "o-", "median d / spread"), ("jitter_ratio", "s--", "jitter / predicted")):
            if var in one:
                values = one[var].values
                shown = np.isfinite(values)
                ax.plot(depth[shown], values[shown], style, color=colors[label], label=f"{label}: {what}")
    ax.set_yscale("log")
    ax.set_xlabel("ReLU site (forward order)")
    ax.set_title("per-layer boundary distance and BN jitter", fontsize=9)
    ax.legend(fontsize=6)

    ax = axes[1, 1]
    if "slice_raster" in ds:
        draw_slice(ax, ds, labels[0])
    else:
        ax.axis("off")
    fig.tight_layout()
    return fig
