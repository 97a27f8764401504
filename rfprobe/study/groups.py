"""A study's runs grouped by everything but their seed: the key numbers of each run's latest checkpoint (or of
every epoch) as mean, standard deviation and count over the runs of a group (what the study figures, the report
and docs/reproduction.md's tables show)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from rfprobe.study.merge import last_checkpoints

UNGROUPED = ("run", "seed", "epoch", "depth", "width")
"""study coordinates that do not define a group: a group is the runs that differ in these only (depth and width
follow from arch)"""


def index_of(values, value) -> int | None:
    """The position of `value` in a coordinate's `values` (a float by np.isclose, anything else by equality),
    None when absent."""
    values = np.asarray(values)
    found = np.flatnonzero(np.isclose(values.astype(float), value) if isinstance(value, float) else values == value)
    return int(found[0]) if found.size else None


@dataclass(frozen=True)
class Metric:
    """One key number of a checkpoint: `var` of study group `group`, at `select` (e.g. a threshold), averaged
    over the dimensions `mean_over` (e.g. ablate's random draws)."""

    name: str
    group: str
    var: str
    select: tuple = ()
    mean_over: tuple[str, ...] = ()

    def values(self, tree: xr.DataTree) -> xr.DataArray | None:
        """Per checkpoint (the `checkpoint` dimension of its group), or None when the study lacks it."""
        if self.group not in tree.children:
            return None
        ds = tree[self.group].to_dataset()
        if self.var not in ds:
            return None
        da = ds[self.var]
        for dim, value in self.select:
            if dim not in da.dims:
                return None
            index = index_of(da[dim].values, value)
            if index is None:
                return None
            da = da.isel({dim: index})
        da = da.mean([d for d in self.mean_over if d in da.dims])
        return da if da.dims == ("checkpoint",) else None


KEY_METRICS = (
    Metric("accuracy", "sparsity", "accuracy"),
    Metric("|gamma| < 0.01", "dead", "pooled_frac_dead", (("pool", "all"), ("threshold", 0.01))),
    Metric("|gamma| < 0.1", "dead", "pooled_frac_dead", (("pool", "all"), ("threshold", 0.1))),
    Metric("dead ReLU channels", "sparsity", "pooled_dead_fraction"),
    Metric("accuracy, small |gamma| pruned", "ablate", "accuracy", (("variant", "pruned"),), ("draw",)),
    Metric("accuracy, as many random pruned", "ablate", "accuracy", (("variant", "random"),), ("draw",)),
)
"""the numbers a study's grouped figures and tables lead with (fractions of channels pooled over all BNs or
ReLU sites of a net; accuracies on the pass's data)"""


def group_keys(ds: xr.Dataset, tree: xr.DataTree | None = None) -> list[str]:
    """The coordinates on `checkpoint` that define a group: the study's coordinates (its `study_coordinates` attr:
    STUDY_COORDS and the inputs' own keys; else every coordinate along `checkpoint` alone) but the UNGROUPED ones,
    arch and mode first."""
    names = str((tree.attrs if tree is not None else ds.attrs).get("study_coordinates", "")).split(", ")
    names = [n for n in names if n] or [c for c in ds.coords if ds[c].dims == ("checkpoint",) and c != "checkpoint"]
    keys = [n for n in names if n not in UNGROUPED and n in ds.coords]
    return sorted(keys, key=lambda k: ("arch", "mode").index(k) if k in ("arch", "mode") else 2)


def group_of(ds: xr.Dataset, keys: list[str]) -> list[tuple]:
    """Per checkpoint, its group: the tuple of its `keys` values."""
    columns = [[str(v) for v in ds[k].values] for k in keys]
    return [tuple(c[i] for c in columns) for i in range(ds.sizes["checkpoint"])]


def group_labels(groups: list[tuple], keys: list[str]) -> dict[tuple, str]:
    """A short label per group: its values of the keys that vary in the study (arch and mode as they are, any
    other key as key=value), so legends stay short however many runs a group holds."""
    varying = [i for i in range(len(keys)) if len({g[i] for g in groups}) > 1]
    if not varying:
        varying = [keys.index(k) for k in ("arch", "mode") if k in keys]

    def text(g: tuple) -> str:
        return " ".join(g[i] if keys[i] in ("arch", "mode") else f"{keys[i]}={g[i]}" for i in varying)

    return {g: text(g) for g in dict.fromkeys(groups)}


@dataclass
class Summary:
    """Mean, standard deviation (ddof 1; NaN for one run) and count over a group's runs, with each run's value."""

    mean: float
    sd: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> "Summary":
        v = np.asarray([x for x in values if np.isfinite(x)], float)
        return cls(float(v.mean()) if v.size else float("nan"), float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                   int(v.size), tuple(float(x) for x in v))

    def text(self, count: bool = True) -> str:
        """In percent of a fraction: `36.78 ± 0.52 (n=3)`, one run alone `36.78 (n=1)`; `-` for none."""
        if self.n == 0:
            return "-"
        spread = f" ± {100 * self.sd:.2f}" if self.n > 1 else ""
        return f"{100 * self.mean:.2f}{spread}" + (f" (n={self.n})" if count else "")


def latest_by_group(values: xr.DataArray, tree: xr.DataTree) -> dict[tuple, Summary]:
    """Per group, the Summary of `values` at each run's latest checkpoint (one value per run)."""
    keys = group_keys(values.to_dataset(name="_"), tree)
    finals = last_checkpoints(values.to_dataset(name="_"))
    latest = values.sel(checkpoint=list(finals.values()))
    out: dict[tuple, list[float]] = {}
    for g, v in zip(group_of(latest.to_dataset(name="_"), keys), np.asarray(latest.values, float)):
        out.setdefault(g, []).append(v)
    return {g: Summary.of(v) for g, v in out.items()}


def by_epoch(values: xr.DataArray, tree: xr.DataTree) -> dict[tuple, dict[int, Summary]]:
    """Per group and epoch, the Summary of `values` over the group's runs that have that epoch (one value per
    run: a run whose init.pt and final.pt are both epoch 0, as an untrained one, counts once)."""
    keys = group_keys(values.to_dataset(name="_"), tree)
    out: dict[tuple, dict[int, dict[str, float]]] = {}
    epochs, runs = values["epoch"].values.astype(int), [str(r) for r in values["run"].values]
    for g, e, run, v in zip(group_of(values.to_dataset(name="_"), keys), epochs, runs, np.asarray(values.values, float)):
        out.setdefault(g, {}).setdefault(int(e), {})[run] = v
    return {g: {e: Summary.of(list(v.values())) for e, v in sorted(per.items())} for g, per in out.items()}


def key_table(tree: xr.DataTree) -> tuple[list[str], list[tuple[str, int, list[Summary | None]]]]:
    """The KEY_METRICS per group at each run's latest checkpoint: (metric names, rows of (group label, runs,
    one Summary per metric or None where the study lacks it))."""
    present = [(m, m.values(tree)) for m in KEY_METRICS]
    present = [(m, v) for m, v in present if v is not None]
    if not present:
        return [], []
    first = present[0][1].to_dataset(name="_")
    keys = group_keys(first, tree)
    finals = last_checkpoints(first)
    groups = group_of(first.sel(checkpoint=list(finals.values())), keys)
    labels = group_labels(groups, keys)
    summaries = [latest_by_group(v, tree) for _, v in present]
    rows = []
    for g in dict.fromkeys(groups):
        rows.append((labels[g], groups.count(g), [s.get(g) for s in summaries]))
    return [m.name for m, _ in present], rows
