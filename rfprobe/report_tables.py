"""The tables rfprobe prints, built from each pass's `headline(ds)`, and the JSON object `--json` prints; the
CLI, `rfprobe compare` and the HTML report share them. The table helpers (`checkpoint_table`, `pct`, `cell`)
are what each pass's own `tables` use; `tables(ds)`, `json_report(ds, written)` and the study tables find
the pass that wrote a Dataset in rfprobe.passes.REGISTRY (`pass_of`)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from rich import box
from rich.table import Table

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


def pass_of(ds: xr.Dataset):
    """The registered pass (rfprobe.passes.REGISTRY) that wrote `ds`."""
    from rfprobe.errors import RfprobeError
    from rfprobe.passes import REGISTRY

    name = ds.attrs.get("rfprobe_pass")
    if name not in REGISTRY:
        raise RfprobeError(f"not an rfprobe result (its attrs name no known pass: {name!r})")
    return REGISTRY[name]


def json_report(ds: xr.Dataset, written: dict | None = None) -> dict:
    """`{"pass", <the pass's json_attrs and json_extra>, "checkpoints": headline(ds), "written"}`."""
    p = pass_of(ds)
    report: dict = {"pass": p.name, **{key: ds.attrs.get(key) for key in p.json_attrs}}
    if p.json_extra is not None:
        report.update(p.json_extra(ds))
    report["checkpoints"] = p.headline(ds)
    if written is not None:
        report["written"] = written
    return report


def tables(ds: xr.Dataset) -> list[Table]:
    """The tables of the pass that wrote `ds`."""
    return pass_of(ds).tables(ds)


# ---------------------------------------------------------------- studies: key numbers side by side

def _format(value, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return pct(value) if kind == "pct" else f"{value:.4g}"


MAX_COLUMNS = 8
"""a study table shows checkpoints as columns up to this many, else one column per mode (mean ± std over
the runs of the mode, each run's latest checkpoint, and their number n)"""


def study_groups(tree: xr.DataTree) -> list[tuple[str, xr.DataTree]]:
    """The pass groups of a study in the registry's order (rfprobe.passes.REGISTRY), not the store's."""
    from rfprobe.passes import REGISTRY

    return [(name, tree[name]) for name in REGISTRY if name in tree.children]


def key_numbers(name: str, ds: xr.Dataset) -> dict[str, dict[str, tuple[float | None, str]]]:
    """label -> the pass's key numbers (`Pass.key_numbers` of each checkpoint's `headline` row)."""
    from rfprobe.passes import REGISTRY

    p = REGISTRY[name]
    return {label: p.key_numbers(row) for label, row in p.headline(ds).items()}


def study_tables(tree: xr.DataTree) -> list[Table]:
    """One table per pass group of a study: its key numbers per checkpoint, or per mode (over each run's
    latest checkpoint) when there are more than MAX_COLUMNS checkpoints."""
    from rfprobe.study import as_result

    out = []
    for name, node in study_groups(tree):
        ds = as_result(node.to_dataset())
        labels = [str(v) for v in ds["checkpoint"].values]
        numbers = key_numbers(name, ds)
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
        for label, numbers in key_numbers(name, ds).items():
            out.setdefault(label, {})[name] = {k: v for k, (v, _) in numbers.items()}
    return out
