"""The three signal propagation panels (squared mean, variance, residual variance against block index),
one line per checkpoint; for NF-ResNets the expected variance is drawn dashed beside the measured one."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rfprobe.plots import checkpoint_colors, plt

PANELS = (("squared_mean", "avg. channel squared mean"), ("variance", "avg. channel variance"),
          ("residual_variance", "residual-branch variance"))
LOG_RANGE = 1e-8
"""the squared-mean panel shows at most this range below its maximum (a BN shortcut's exact zero mean would
otherwise stretch the axis down to 1e-15)"""


def signal_figure(ds: xr.Dataset, title: str | None = None):
    """A figure of the SPP panels of every checkpoint in the `signal` result `ds`; block 0 is the stem
    output. The squared-mean panel is on a log scale (floored at LOG_RANGE times its maximum). Thin grey lines
    mark the transition blocks (a shortcut that is not the identity) of any checkpoint."""
    labels = [str(label) for label in ds["checkpoint"].values]
    colors = checkpoint_colors(labels)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    blocks = ds["block"].values
    transitions = sorted({int(b) for b in blocks[(ds["transition"] == 1).any("checkpoint").values]})
    for ax, (var, name) in zip(axes, PANELS):
        for b in transitions:
            ax.axvline(b, color="0.85", linewidth=0.8, zorder=0)
        for label in labels:
            sel = ds.sel(checkpoint=label)
            ax.plot(blocks, sel[var].values, color=colors[label], linewidth=1.4, label=label)
            if var == "variance" and np.isfinite(sel["expected_variance"].values).any():
                ax.plot(blocks, sel["expected_variance"].values, color=colors[label], linewidth=1.0,
                        linestyle="--", label=f"{label} (expected)")
        values = ds[var].values[np.isfinite(ds[var].values)]
        if var == "squared_mean" and values.size and values.max() > 0:
            ax.set_yscale("log")
            positive = values[values > 0]
            ax.set_ylim(bottom=max(positive.min(), positive.max() * LOG_RANGE) / 2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("block (0 = stem)")
    axes[1].legend(fontsize=7, frameon=False)
    bn = ", ".join(sorted({str(v) for v in np.atleast_1d(ds["bn_statistics"].values)} - {"none"}))
    subtitle = f"input: {ds.attrs.get('input', '?')}, batch {ds.attrs.get('n_examples', '?')}"
    if bn:
        subtitle += f"; BN statistics: {bn}"
    fig.suptitle(f"{title}  ({subtitle})" if title else f"Signal propagation ({subtitle})", fontsize=10)
    return fig
