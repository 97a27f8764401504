"""Study figures drawn from study.zarr (an xarray DataTree) alone, one per question, runs grouped by everything
but their seed (rfprobe.study.groups): the key numbers by group with seed error bars, against epoch (mean and
a +-1 sd band), against network depth, the pruning curves, and per BN layer against relative depth. Colour
follows the trainable mode, line style the architecture (and any other grouping key), so legends hold one
entry per group however many checkpoints the study has."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rfprobe.plots import plt
from rfprobe.study.groups import (KEY_METRICS, Metric, Summary, by_epoch, group_keys, group_labels, group_of, index_of,
                                  latest_by_group)
from rfprobe.study.merge import last_checkpoints

LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MODE_ORDER = ("all", "bn", "bn+output", "norm", "norm+output", "random", "output", "gamma", "beta", "none")

TRAJECTORY_METRICS = tuple(m for m in KEY_METRICS if m.group in ("dead", "sparsity"))
"""the key numbers drawn against epoch (ablate runs at the latest checkpoints of a trajectory)"""


class Styles:
    """Colour per trainable mode (tab10, in MODE_ORDER), line style per architecture and other grouping key;
    `legend` gives each group once."""

    def __init__(self, groups: list[tuple], keys: list[str]):
        self.keys = keys
        mode_at = keys.index("mode") if "mode" in keys else None
        modes = sorted({g[mode_at] for g in groups} if mode_at is not None else {""},
                       key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m))
        cmap = plt.get_cmap("tab10")
        self.colors = {m: cmap(i % 10) for i, m in enumerate(modes)}
        rest = list(dict.fromkeys(self._rest(g) for g in groups))
        self.lines = {r: LINE_STYLES[i % len(LINE_STYLES)] for i, r in enumerate(rest)}
        self.mode_at = mode_at
        self.labels = group_labels(groups, keys)

    def _rest(self, g: tuple) -> tuple:
        return tuple(v for k, v in zip(self.keys, g) if k != "mode")

    def color(self, g: tuple):
        return self.colors[g[self.mode_at] if self.mode_at is not None else ""]

    def line(self, g: tuple):
        return self.lines[self._rest(g)]


def _panels(n: int, width: float, height: float, columns: int = 3, **kwargs):
    """A figure of `n` panels in rows of at most `columns` (so each stays legible at a page's width), the
    unused ones hidden; returns (figure, the n axes in order)."""
    rows = (n + columns - 1) // columns
    cols = min(n, columns)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained",
                             **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _ordered(groups) -> list[tuple]:
    return list(dict.fromkeys(groups))


def _metric_panels(tree: xr.DataTree, metrics=KEY_METRICS) -> list[tuple[Metric, xr.DataArray]]:
    return [(m, v) for m in metrics if (v := m.values(tree)) is not None]


def _members(groups: list[tuple]) -> dict[tuple, list[int]]:
    """Per group (in order of first appearance), the positions of its members in `groups`."""
    out: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def _band(ax, x, mean, sd, n: int, g: tuple, styles: Styles, alpha: float = 0.18, marker="."):
    """A group's mean against `x` as a line labelled with its number of runs `n`, and +-1 sd as a band when
    n > 1."""
    ax.plot(x, mean, marker=marker, color=styles.color(g), linestyle=styles.line(g),
            label=f"{styles.labels[g]} (n={n})")
    if n > 1:
        ax.fill_between(x, mean - sd, mean + sd, color=styles.color(g), alpha=alpha, linewidth=0)


def _runs_band(ax, x, values: np.ndarray, g: tuple, styles: Styles, alpha: float = 0.18):
    """`_band` of a (runs, points) array: the mean over runs and their sample sd (n - 1)."""
    n = len(values)
    _band(ax, x, np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1) if n > 1 else None, n, g, styles, alpha)


def groups_figure(tree: xr.DataTree):
    """Per key number, one bar per group (its runs' latest checkpoints): the mean over seeds, +-1 sd as an
    error bar, each run as a dot. None when the study holds none of the key numbers."""
    panels = _metric_panels(tree)
    if not panels:
        return None
    first = panels[0][1].to_dataset(name="_")
    keys = group_keys(first, tree)
    groups = _ordered(group_of(first.sel(checkpoint=list(last_checkpoints(first).values())), keys))
    styles = Styles(groups, keys)
    fig, axes = _panels(len(panels), max(3.2, 0.42 * len(groups) + 1.2), 3.9)
    for ax, (metric, values) in zip(axes, panels):
        summary = latest_by_group(values, tree)
        for i, g in enumerate(groups):
            s = summary.get(g)
            if s is None or s.n == 0:
                continue
            ax.bar(i, 100 * s.mean, color=styles.color(g), alpha=0.55, edgecolor="black",
                   linestyle=styles.line(g), linewidth=0.8)
            if s.n > 1:
                ax.errorbar(i, 100 * s.mean, yerr=100 * s.sd, color="black", capsize=3, linewidth=1)
            ax.plot(np.full(s.n, i) + np.linspace(-0.15, 0.15, s.n), 100 * np.asarray(s.values), ".", color="black",
                    markersize=3)
        ax.set_xticks(range(len(groups)), [styles.labels[g] for g in groups], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric.name} (%)", fontsize=10)
    fig.suptitle("Latest checkpoint of each run: mean ± sd over seeds (dots: runs)")
    return fig


def trajectory_figure(tree: xr.DataTree):
    """Against epoch, per group: the mean over its runs (line) and +-1 sd (band) of the small-|gamma| fractions
    (dead pass, all BNs), the dead ReLU channels and the accuracy (sparsity pass). None when no run has two
    epochs or neither group is in the study."""
    panels = _metric_panels(tree, TRAJECTORY_METRICS)
    if not panels:
        return None
    first = panels[0][1].to_dataset(name="_")
    runs = [str(r) for r in first["run"].values]
    if max((runs.count(r) for r in set(runs)), default=0) < 2:
        return None
    keys = group_keys(first, tree)
    groups = _ordered(group_of(first, keys))
    styles = Styles(groups, keys)
    fig, axes = _panels(len(panels), 4.3, 3.7, columns=2)
    for ax, (metric, values) in zip(axes, panels):
        for g, per_epoch in by_epoch(values, tree).items():
            epochs = np.array(list(per_epoch), float)
            mean = 100 * np.array([s.mean for s in per_epoch.values()])
            sd = 100 * np.array([s.sd if s.n > 1 else 0.0 for s in per_epoch.values()])
            _band(ax, epochs, mean, sd, max(s.n for s in per_epoch.values()), g, styles,
                  marker="." if len(epochs) < 40 else None)
        ax.set_title(f"{metric.name} (%)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    fig.suptitle("Over training: mean over seeds, band ±1 sd")
    return fig


def depth_figure(tree: xr.DataTree):
    """Against the network's depth, per group without its architecture (mode and other keys): mean +-1 sd over
    the runs at each depth (latest checkpoints). None unless some such group has two depths."""
    panels = _metric_panels(tree)
    if not panels:
        return None
    first = panels[0][1].to_dataset(name="_")
    if "depth" not in first.coords:
        return None
    keys = [k for k in group_keys(first, tree) if k not in ("arch",)]
    finals = list(last_checkpoints(first).values())
    latest = first.sel(checkpoint=finals)
    depths = {}
    for g, d in zip(group_of(latest, keys), latest["depth"].values.astype(int)):
        depths.setdefault(g, set()).add(int(d))
    if not any(len(d) > 1 for d in depths.values()):
        return None
    groups = [g for g in _ordered(group_of(latest, keys)) if len(depths[g]) > 1]
    styles = Styles(groups, keys)
    fig, axes = _panels(len(panels), 4.0, 3.6)
    for ax, (metric, values) in zip(axes, panels):
        finals_here = list(last_checkpoints(values.to_dataset(name="_")).values())
        here = values.sel(checkpoint=finals_here)
        points: dict[tuple, dict[int, list[float]]] = {}
        for gg, d, v in zip(group_of(here.to_dataset(name="_"), keys), here["depth"].values.astype(int),
                            np.asarray(here.values, float)):
            points.setdefault(gg, {}).setdefault(int(d), []).append(v)
        for g in groups:
            if g not in points:
                continue
            xs = sorted(points[g])
            summaries = [Summary.of(points[g][x]) for x in xs]
            mean = [100 * s.mean for s in summaries]
            sd = [100 * s.sd if s.n > 1 else 0.0 for s in summaries]
            ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3, color=styles.color(g), linestyle=styles.line(g),
                        label=styles.labels[g] or "runs")
        ax.set_title(f"{metric.name} (%)", fontsize=10)
        ax.set_xlabel("network depth")
    axes[0].legend(fontsize=7)
    fig.suptitle("Against depth: mean ± sd over seeds, latest checkpoints")
    return fig


def pruning_figure(tree: xr.DataTree):
    """ablate's pruning curves per group (latest checkpoints): accuracy against the fraction of BN channels
    zeroed, a panel per curve (smallest |gamma|, random, largest); mean over runs and draws, band +-1 sd over
    runs of each run's mean over draws. None without ablate curves."""
    if "ablate" not in tree.children or "curve_accuracy" not in tree["ablate"].to_dataset():
        return None
    ds = tree["ablate"].to_dataset()
    finals = list(last_checkpoints(ds).values())
    ds = ds.sel(checkpoint=finals)
    keys = group_keys(ds, tree)
    groups = group_of(ds, keys)
    styles = Styles(_ordered(groups), keys)
    curves = [str(c) for c in ds["curve"].values]
    fractions = 100 * ds["fraction"].values.astype(float)
    per_run = ds["curve_accuracy"].mean("draw")
    fig, axes = _panels(len(curves), 4.4, 3.7, sharey=True)
    for ax, curve in zip(axes, curves):
        accuracy = 100 * np.asarray(per_run.sel(curve=curve).values, float)
        for g, members in _members(groups).items():
            _runs_band(ax, fractions, accuracy[members], g, styles)
        ax.set_title(f"channels pruned: {curve}", fontsize=10)
        ax.set_xlabel("% of BN channels zeroed")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Pruning curves: mean over seeds (and random draws), band ±1 sd over seeds")
    return fig


def layer_figure(tree: xr.DataTree, threshold: float = 0.01):
    """Per BN layer, the fraction of its channels with |gamma| < `threshold` (dead pass) against the layer's
    relative depth in its own network (0 first, 1 last), per group: mean over runs, band +-1 sd. None without
    the dead pass's per-layer fractions."""
    if "dead" not in tree.children:
        return None
    ds = tree["dead"].to_dataset()
    if "frac_dead" not in ds or "relative_depth" not in ds.coords:
        return None
    at = index_of(ds["threshold"].values, float(threshold))
    if at is None:
        return None
    finals = list(last_checkpoints(ds).values())
    ds = ds.sel(checkpoint=finals).isel(threshold=at)
    keys = group_keys(ds, tree)
    groups = group_of(ds, keys)
    styles = Styles(_ordered(groups), keys)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    for g, members in _members(groups).items():
        depth = np.asarray(ds["relative_depth"].values, float)[members]
        frac = 100 * np.asarray(ds["frac_dead"].values, float)[members]
        keep = np.isfinite(depth[0]) & np.isfinite(frac[0])
        order = np.argsort(depth[0][keep])
        _runs_band(ax, depth[0][keep][order], frac[:, keep][:, order], g, styles, alpha=0.15)
    ax.set_xlabel("relative depth of the BN layer in its network (0 first, 1 last)")
    ax.set_ylabel(f"% of channels with |gamma| < {threshold:g}")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Per BN layer, latest checkpoints: mean over seeds, band ±1 sd", fontsize=10)
    return fig


STUDY_FIGURES = (
    ("By group", groups_figure, "key numbers by group, mean and sd over seeds"),
    ("Over training", trajectory_figure, "key numbers against epoch, mean and sd band"),
    ("Against depth", depth_figure, "key numbers against network depth"),
    ("Pruning curves", pruning_figure, "accuracy against the fraction of channels pruned"),
    ("Per BN layer", layer_figure, "small-|gamma| fraction per BN layer against relative depth"),
)
"""the study's own figures (title, function of the DataTree returning a figure or None, alt text), in the order
the report shows them"""
