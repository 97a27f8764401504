"""Figure of the `ablate` Dataset: accuracy against the fraction of eligible BN channels pruned."""

from __future__ import annotations

import matplotlib.pyplot as plt
import xarray as xr

from rfprobe.plots import checkpoint_colors

POINTS = {"pruned": ("*", "|gamma| < T"), "random": ("o", "random, same count"),
          "largest": ("X", "largest |gamma|, same count"), "reenabled": ("D", "re-enabled")}


def ablate_figure(ds: xr.Dataset):
    """Per checkpoint: the smallest-|gamma| curve (solid), the random control (dashed, min-max band over
    seeds), the baseline (dotted), and the threshold variants as markers at the fraction they prune."""
    labels = list(ds["checkpoint"].values)
    colors = checkpoint_colors(labels)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for label in labels:
        one = ds.sel(checkpoint=label)
        color = colors[label]
        if one.sizes["fraction"]:
            f = one["fraction"].values
            ax.plot(f, one["curve_accuracy"].sel(curve="smallest").mean("draw"), color=color, marker=".",
                    label=f"{label}: smallest |gamma|")
            rand = one["curve_accuracy"].sel(curve="random")
            ax.plot(f, rand.mean("draw"), color=color, linestyle="--", label=f"{label}: random")
            ax.fill_between(f, rand.min("draw"), rand.max("draw"), color=color, alpha=0.15, linewidth=0)
        ax.axhline(float(one["accuracy"].sel(variant="baseline").mean("draw")), color=color, linestyle=":", linewidth=1)
        x = float(one["pruned_fraction"])
        for variant in one["variant"].values:
            if variant in POINTS:
                acc = one["accuracy"].sel(variant=variant)
                mean = float(acc.mean("draw"))
                spread = [[max(0.0, mean - float(acc.min("draw")))], [max(0.0, float(acc.max("draw")) - mean)]]
                ax.errorbar([x], [mean], yerr=spread, marker=POINTS[variant][0], color=color, markersize=8,
                            linestyle="", capsize=2)
    for variant, (marker, text) in POINTS.items():
        if variant in ds["variant"].values:
            ax.plot([], [], marker=marker, linestyle="", color="0.3", label=f"{text} (at its fraction)")
    ax.plot([], [], linestyle=":", color="0.3", label="baseline")
    ax.set_xlabel("fraction of eligible BN channels pruned")
    ax.set_ylabel(f"accuracy ({ds.attrs.get('dataset', '')} {ds.attrs.get('split', '')})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"Pruning BN channels ({ds.attrs.get('prune_operation', '')}; BNs: {ds.attrs.get('eligible_bns', '')}; "
                 f"T = {ds.attrs.get('prune_below', '')})", fontsize=9)
    return fig
