"""The tables rfprobe prints for a stacked result (one column per checkpoint), built from each pass's
`headline(ds)`, and the JSON object `--json` prints. The CLI, `rfprobe compare` and the HTML report share them.

`tables(ds)` dispatches on `ds.attrs["rfprobe_pass"]`; `json_report(ds, written)` is the pass's headline
with the run-wide attrs a reader needs to interpret it (`JSON_ATTRS`)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from rich import box
from rich.table import Table

JSON_ATTRS = {
    "affine": (),
    "dead": (),
    "sparsity": ("dataset", "split", "n_examples", "normalization"),
    "ablate": ("dataset", "split", "n_examples", "normalization", "prune_below", "prune_operation", "eligible_bns"),
    "partition": ("dataset", "split", "n_examples", "normalization", "recalibrate_bn"),
    "signal": ("input", "n_examples"),
}
"""per pass, the attrs `--json` reports beside the headline (attr name = JSON key)"""


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def cell(value) -> str:
    """A table cell: `-` for None, text and integers as they are, other numbers to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, (str, bool, int, np.integer)):
        return str(value)
    return f"{value:.4g}"


def checkpoint_table(title: str, summary: dict[str, dict], rows) -> Table:
    """A table with one column per checkpoint; `rows` are (name, cell) pairs, cell(one summary) -> str."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("")
    for label in summary:
        table.add_column(label, justify="right")
    for name, fmt in rows:
        table.add_row(name, *[fmt(one) for one in summary.values()])
    return table


def pass_module(ds: xr.Dataset):
    """The `rfprobe.passes` module that wrote `ds`."""
    import importlib

    from rfprobe.errors import RfprobeError

    name = ds.attrs.get("rfprobe_pass")
    if name not in JSON_ATTRS:
        raise RfprobeError(f"not an rfprobe result (its attrs name no known pass: {name!r})")
    return importlib.import_module(f"rfprobe.passes.{name}")


def json_report(ds: xr.Dataset, written: dict | None = None) -> dict:
    """`{"pass", <JSON_ATTRS of the pass>, "checkpoints": headline(ds), "written"}` (dead adds its thresholds)."""
    name = ds.attrs["rfprobe_pass"]
    report: dict = {"pass": name}
    for key in JSON_ATTRS[name]:
        value = ds.attrs.get(key)
        report[key] = bool(value) if key == "recalibrate_bn" else value
    if name == "dead":
        report["thresholds"] = [float(t) for t in ds["threshold"].values]
    report["checkpoints"] = pass_module(ds).headline(ds)
    if written is not None:
        report["written"] = written
    return report


def tables(ds: xr.Dataset) -> list[Table]:
    """The tables of the pass that wrote `ds`."""
    pass_module(ds)
    return TABLES[ds.attrs["rfprobe_pass"]](ds)


def affine_tables(ds: xr.Dataset) -> list[Table]:
    from rfprobe.passes.affine import headline

    rows = [("BN layers", lambda s: str(s["n_layers"])), ("channels", lambda s: str(s["n_channels"])),
            ("gamma mean", lambda s: f"{s['gamma_mean']:.4g}"), ("gamma std", lambda s: f"{s['gamma_std']:.4g}"),
            ("gamma < 0", lambda s: pct(s["gamma_frac_negative"])),
            *[(f"|gamma| q{k}", lambda s, k=k: f"{s['abs_gamma_quantiles'][k]:.3g}") for k in ("0", "0.05", "0.5", "0.95", "1")],
            ("beta mean", lambda s: f"{s['beta_mean']:.4g}"), ("beta std", lambda s: f"{s['beta_std']:.4g}"),
            ("beta < 0", lambda s: pct(s["beta_frac_negative"]))]
    return [checkpoint_table("BatchNorm gamma / beta, pooled over all BN channels", headline(ds), rows)]


DEAD_POOLS = {"all": "all", "no_shortcut": "no shortcut", "relu": "relu"}


def dead_tables(ds: xr.Dataset) -> list[Table]:
    """Per checkpoint: the pooled dead/off percentages (from the headline) and each layer's counts."""
    from rfprobe.passes.dead import headline

    summary = headline(ds)
    thresholds = [f"{t:g}" for t in ds["threshold"].values]
    out = []
    for label, pools in summary.items():
        one = ds.sel(checkpoint=label)
        layers = one.isel(layer=np.flatnonzero(np.isfinite(np.asarray(one["n_channels"].values, float))))
        table = Table(title=f"{label}: dead (|gamma| < t) / off (also beta <= 0, BN feeding a ReLU)",
                      caption="cells dead/off: % of the pool's channels on pooled lines, channel counts on layer lines",
                      box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
        table.add_column("layer", no_wrap=True)
        table.add_column("role/pool", no_wrap=True)
        table.add_column("ch", justify="right")
        for t in thresholds:
            table.add_column(f"t={t}", justify="right")
        for pool, name in DEAD_POOLS.items():
            p = pools[pool]
            table.add_row("pooled", name, str(p["n_channels"]),
                          *[f"{100 * p['dead_frac'][t]:.1f}/{100 * p['off_frac'][t]:.1f}" for t in thresholds],
                          style="bold", end_section=pool == "relu")
        for i in range(layers.sizes["layer"]):
            row = layers.isel(layer=i)
            table.add_row(str(row["layer"].values), str(row["role"].values), str(int(row["n_channels"])),
                          *[f"{int(d)}/{int(o)}" for d, o in zip(row["n_dead"].values, row["n_off"].values)])
        out.append(table)
    return out


def sparsity_tables(ds: xr.Dataset) -> list[Table]:
    from rfprobe.passes.sparsity import headline

    summary = headline(ds)
    rows = [("accuracy", lambda s: pct(s["accuracy"])),
            ("ReLU outputs = 0", lambda s: pct(s["zero_fraction"])),
            ("dead channels", lambda s: f"{s['dead']} / {s['channels']} ({pct(s['dead_fraction'])})"),
            ("  of them at BN sites", lambda s: str(s["bn_dead"])),
            *[(f"  dead & |gamma| < {t}", lambda s, t=t: f"{s['dead_small_gamma'][t]} / {s['small_gamma'][t]} small")
              for t in next(iter(summary.values()))["small_gamma"]],
            ("entirely-0 channels / example", lambda s: pct(s["example_zero_channel_fraction"]))]
    title = f"activation sparsity: {ds.attrs['dataset']} {ds.attrs['split']}, {ds.attrs['n_examples']} examples"
    return [checkpoint_table(title, summary, rows)]


def ablate_tables(ds: xr.Dataset) -> list[Table]:
    """Per checkpoint: every variant's accuracy and loss, then the pruning curve."""
    from rfprobe.passes.ablate import headline

    out = []
    prune_below, operation, eligible = (ds.attrs[k] for k in ("prune_below", "prune_operation", "eligible_bns"))
    for label, s in headline(ds).items():
        table = Table(title=f"{label}: {s['n_pruned']} of {s['n_eligible']} eligible channels have |gamma| < {prune_below:g} "
                            f"({pct(s['pruned_fraction'])}; {operation}; BNs: {eligible})", box=box.SIMPLE_HEAD)
        for column in ("variant", "channels", "accuracy", "loss"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for variant, v in s["variants"].items():
            spread = f" ± {100 * v['accuracy_std']:.1f}" if v["n_seeds"] > 1 else ""
            table.add_row(variant, str(v["n_changed"]), f"{pct(v['accuracy'])}{spread}", f"{v['loss']:.4f}")
        out.append(table)
        if s["curve"]:
            curve = Table(title=f"{label}: pruning the smallest-|gamma| fraction vs random", box=box.SIMPLE_HEAD)
            for column in ("fraction", "channels", "smallest", "random (mean)"):
                curve.add_column(column, justify="right")
            for point in s["curve"]:
                curve.add_row(f"{point['fraction']:g}", str(point["n_pruned"]), pct(point["smallest"]), pct(point["random"]))
            out.append(curve)
    return out


SIGNAL_ROWS = (("residual blocks", "blocks"), ("BN statistics", "bn_statistics"), ("variance: stem", "variance_stem"),
               ("variance: last block", "variance_last"), ("variance: max", "variance_max"),
               ("squared mean: max", "squared_mean_max"), ("residual variance: mean", "residual_variance_mean"),
               ("expected variance: last", "expected_variance_last"))


def signal_tables(ds: xr.Dataset) -> list[Table]:
    from rfprobe.passes.signal import headline

    title = f"signal propagation (block 0 = stem), {ds.attrs['input']} input, batch {ds.attrs['n_examples']}"
    return [checkpoint_table(title, headline(ds), [(name, lambda s, k=key: cell(s[k])) for name, key in SIGNAL_ROWS])]


def partition_tables(ds: xr.Dataset) -> list[Table]:
    from rfprobe.passes.partition import headline

    summary = headline(ds)
    recalibrated = ", BN recalibrated on them" if int(ds.attrs["recalibrate_bn"]) else ""
    title = f"linear regions: {ds.attrs['dataset']} {ds.attrs['split']}, {ds.attrs['n_examples']} points{recalibrated}"
    keys = dict.fromkeys(k for row in summary.values() for k in row)
    return [checkpoint_table(title, summary, [(k.replace("_", " "), lambda s, k=k: cell(s.get(k))) for k in keys])]


TABLES = {"affine": affine_tables, "dead": dead_tables, "sparsity": sparsity_tables, "ablate": ablate_tables,
          "signal": signal_tables, "partition": partition_tables}


# ---------------------------------------------------------------- studies: key numbers side by side

def _scalar(da) -> float:
    return float(np.asarray(da.values, dtype=float))


def key_numbers(pass_name: str, one: xr.Dataset) -> dict[str, tuple[float | None, str]]:
    """The headline numbers of one checkpoint's result (`one` = a study group `.sel(checkpoint=label)`), as
    name -> (value, "pct" | "num"): what a study table shows side by side."""
    if pass_name == "affine":
        return {"gamma mean": (_scalar(one["pooled_gamma_mean"]), "num"),
                "|gamma| median": (_scalar(one["pooled_abs_gamma_quantiles"].sel(quantile=0.5)), "num"),
                "gamma < 0": (_scalar(one["pooled_gamma_frac_negative"]), "pct"),
                "beta mean": (_scalar(one["pooled_beta_mean"]), "num")}
    if pass_name == "dead":
        out = {}
        for kind, name in (("dead", "|gamma| < {t}"), ("off", "off (also beta <= 0) at {t}")):
            for t in one["threshold"].values:
                out[name.format(t=f"{t:g}")] = (_scalar(one[f"pooled_frac_{kind}"].sel(pool="all", threshold=t)), "pct")
        return out
    if pass_name == "sparsity":
        return {"accuracy": (_scalar(one["accuracy"]), "pct"),
                "ReLU outputs = 0": (_scalar(one["pooled_zero_fraction"]), "pct"),
                "dead channels": (_scalar(one["pooled_dead_fraction"]), "pct"),
                "entirely-0 channels / example": (_scalar(one["pooled_example_zero_channel_fraction_mean"]), "pct")}
    if pass_name == "ablate":
        out = {f"accuracy {v}": (_scalar(one["accuracy"].sel(variant=v).mean("draw")), "pct")
               for v in one["variant"].values}
        out["pruned fraction"] = (_scalar(one["pruned_fraction"]), "pct")
        return out
    if pass_name == "partition":
        from rfprobe.passes.partition import headline

        row = next(iter(headline(one.expand_dims("checkpoint")).values()))
        return {k.replace("_", " "): (float(v), "num") for k, v in row.items() if isinstance(v, (int, float))
                and not isinstance(v, bool)}
    if pass_name == "signal":
        from rfprobe.passes.signal import headline

        row = next(iter(headline(one.expand_dims("checkpoint")).values()))
        return {name: (row[key], "num") for name, key in SIGNAL_ROWS if key not in ("blocks", "bn_statistics")}
    raise KeyError(pass_name)


def _format(value, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return pct(value) if kind == "pct" else f"{value:.4g}"


MAX_COLUMNS = 8
"""a study table shows checkpoints as columns up to this many, else one column per mode (mean ± std over
the runs of the mode, each run's latest checkpoint, and their number n)"""


def study_groups(tree: xr.DataTree) -> list[tuple[str, xr.DataTree]]:
    """The pass groups of a study in the passes' own order (rfprobe.passes.PASSES), not the store's."""
    from rfprobe.passes import PASSES

    return [(name, tree[name]) for name in PASSES if name in tree.children]


def study_tables(tree: xr.DataTree) -> list[Table]:
    """One table per pass group of a study: its key numbers per checkpoint, or per mode (over each run's
    latest checkpoint) when there are more than MAX_COLUMNS checkpoints."""
    from rfprobe.study import as_result

    out = []
    for name, node in study_groups(tree):
        ds = as_result(node.to_dataset())
        labels = [str(v) for v in ds["checkpoint"].values]
        numbers = {label: key_numbers(name, ds.sel(checkpoint=label)) for label in labels}
        rows = list(dict.fromkeys(k for n in numbers.values() for k in n))
        if len(labels) <= MAX_COLUMNS:
            columns = {label: {r: _format(*numbers[label].get(r, (None, "num"))) for r in rows} for label in labels}
            title = f"{name}: one column per checkpoint"
        else:
            from rfprobe.study import last_checkpoints

            labels = list(last_checkpoints(ds).values())  # one per run: its latest epoch
            modes = [str(ds["mode"].sel(checkpoint=label).values) for label in labels]
            columns = {}
            for mode in dict.fromkeys(modes):
                members = [label for label, m in zip(labels, modes) if m == mode]
                cells = {}
                for r in rows:
                    values = np.array([numbers[label][r][0] for label in members if r in numbers[label]
                                       and numbers[label][r][0] is not None], dtype=float)
                    kind = next((numbers[label][r][1] for label in members if r in numbers[label]), "num")
                    values = values[np.isfinite(values)]
                    cells[r] = "-" if not values.size else (
                        f"{_format(values.mean(), kind)} ± {_format(values.std(), kind)}" if values.size > 1
                        else _format(values[0], kind))
                columns[f"{mode} (n={len(members)})"] = cells
            title = f"{name}: mean ± std over the runs of each mode (each run's latest checkpoint)"
        out.append(checkpoint_table(title, columns, [(r, lambda c, r=r: c[r]) for r in rows]))
    return out


def study_json(tree: xr.DataTree) -> dict:
    """label -> pass -> key number -> value, for `rfprobe compare --json`."""
    from rfprobe.study import as_result

    out: dict = {}
    for name, node in study_groups(tree):
        ds = as_result(node.to_dataset())
        for label in ds["checkpoint"].values:
            numbers = key_numbers(name, ds.sel(checkpoint=label))
            out.setdefault(str(label), {})[name] = {k: v for k, (v, _) in numbers.items()}
    return out
