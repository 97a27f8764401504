"""`rfprobe dead`: how many normalisation channels training switched off (no data needed).

Per normalisation layer (every kind, `rfprobe.graph`) and threshold t (`threshold` dim):

- `n_dead` = #{channels c : |gamma_c| < t}, `frac_dead` = n_dead / n_channels (the paper's "disabled
  features": ~27% of channels at t = 0.01 for BN-only training vs ~9% for full training, docs/science.md section 1);
- `n_off` = #{c : |gamma_c| < t and beta_c <= 0} on BNs whose output goes straight into a ReLU (role
  `relu`): ReLU(gamma_c * xhat + beta_c) is then ~0 for every input, so the feature is gone. On other
  roles `n_off` is 0 by definition: a `residual` BN's channel feeds an addition, where the skip path still
  carries signal. `frac_off` = n_off / n_channels.

Pooled over a `pool` dim, each channel weighing one: `all` (every normalisation layer; never layer-scale
parameters), `no_shortcut` (every one except projection-shortcut norms) and `relu` (only norms that feed a ReLU): `pooled_n_channels`, `pooled_n_dead`,
`pooled_frac_dead`, `pooled_n_off`, `pooled_frac_off` (off channels in the pool / channels in the pool).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch.nn as nn
import xarray as xr
from rich import box
from rich.table import Table

from rfprobe.errors import RfprobeError
from rfprobe.options import defaults
from rfprobe.passes.base import GAMMA_THRESHOLDS
from rfprobe.passes.affine import AFFINE_DEFINITION, NormAffine, checkpoint_affine, norm_affine
from rfprobe.results import provenance
from rfprobe.passes.dead import OPTIONS



DEFAULT_THRESHOLDS = GAMMA_THRESHOLDS
POOLS = ("all", "no_shortcut", "relu")
DEAD_DEFINITION = ("|gamma| < t: a channel is dead at threshold t when the absolute value of its normalisation "
                   "layer's weight is below t")
OFF_DEFINITION = ("|gamma| < t and beta <= 0 on a norm layer whose output feeds a ReLU directly (role relu): the ReLU "
                  "output max(0, gamma * xhat + beta) is then ~0 for every input; 0 on other roles")
POOL_DEFINITION = ("all: every channel of every normalisation layer; no_shortcut: every channel except those of "
                   "projection-shortcut norms; relu: channels of norms that feed a ReLU directly; fractions are "
                   "counts / channels in the pool")


def check_options(thresholds: Sequence[float] | None) -> np.ndarray:
    """The thresholds sorted ascending without repeats; each must be finite and > 0."""
    values = list(DEFAULT_THRESHOLDS if thresholds is None or len(thresholds) == 0 else thresholds)
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise RfprobeError(f"--threshold must be finite and > 0, got {', '.join(map(str, bad))}")
    return np.array(sorted(set(float(t) for t in values)))


def _in_pool(roles: np.ndarray, pool: str) -> np.ndarray:
    if pool == "all":
        return np.ones(len(roles), bool)
    if pool == "no_shortcut":
        return roles != "shortcut"
    return roles == "relu"


def run(model: nn.Module, *, thresholds: Sequence[float] | None = None, checkpoint=None, sites=None, command=None,
        affine: NormAffine | None = None) -> xr.Dataset:
    """Dead and off channel counts of one model per layer and pooled (module docstring)."""
    t = check_options(thresholds)
    affine = affine or norm_affine(model, sites, "rfprobe dead")
    roles = np.array([s.role for s in affine.sites], dtype=object)
    n_channels = np.array([s.n_channels for s in affine.sites], dtype=np.int64)
    dead = np.stack([np.sum(np.abs(g)[:, None] < t, axis=0) for g in affine.gamma]).astype(np.int64)
    off = np.stack([np.sum((np.abs(g)[:, None] < t) & (b[:, None] <= 0), axis=0) if role == "relu" else np.zeros(len(t))
                    for g, b, role in zip(affine.gamma, affine.beta, roles)]).astype(np.int64)
    pools = np.stack([_in_pool(roles, p) for p in POOLS])
    pooled_channels = pools.astype(np.int64) @ n_channels
    pooled_dead, pooled_off = pools.astype(np.int64) @ dead, pools.astype(np.int64) @ off
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled_frac_dead = np.where(pooled_channels[:, None] > 0, pooled_dead / pooled_channels[:, None], np.nan)
        pooled_frac_off = np.where(pooled_channels[:, None] > 0, pooled_off / pooled_channels[:, None], np.nan)
    data = {
        "n_dead": (("layer", "threshold"), dead),
        "frac_dead": (("layer", "threshold"), dead / n_channels[:, None]),
        "n_off": (("layer", "threshold"), off),
        "frac_off": (("layer", "threshold"), off / n_channels[:, None]),
        "pooled_n_channels": (("pool",), pooled_channels),
        "pooled_n_dead": (("pool", "threshold"), pooled_dead),
        "pooled_frac_dead": (("pool", "threshold"), pooled_frac_dead),
        "pooled_n_off": (("pool", "threshold"), pooled_off),
        "pooled_frac_off": (("pool", "threshold"), pooled_frac_off),
    }
    coords = {k: v for k, v in affine.coords().items() if k != "channel"}
    coords.update(threshold=("threshold", t), pool=("pool", np.array(POOLS, dtype=object)))
    attrs = provenance("dead", checkpoint, command=command, dead_definition=DEAD_DEFINITION, off_definition=OFF_DEFINITION,
                       pool_definition=POOL_DEFINITION, affine_definition=AFFINE_DEFINITION,
                       thresholds=", ".join(f"{x:g}" for x in t))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def headline(ds: xr.Dataset) -> dict:
    """The JSON headline: per checkpoint, pool and threshold, the pooled dead/off fractions and counts."""
    keys = [f"{x:g}" for x in ds["threshold"].values]
    out = {}
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        out[str(label)] = {
            pool: {
                "n_channels": int(one["pooled_n_channels"].sel(pool=pool)),
                **{f"{kind}_{what}": {k: (int(v) if what == "n" else float(v)) for k, v in
                                      zip(keys, one[f"pooled_{what}_{kind}"].sel(pool=pool).values)}
                   for kind in ("dead", "off") for what in ("frac", "n")},
            } for pool in ds["pool"].values}
    return out




def validate(options: dict, n_points: int | None = None) -> dict:
    return {**options, "threshold": check_options(options["threshold"])}


def run_checkpoint(checkpoint, data=None, options: dict | None = None, *, command=None, **_) -> xr.Dataset:
    options = validate({**defaults(OPTIONS), **(options or {})})
    return run(checkpoint.model, thresholds=options["threshold"], checkpoint=checkpoint, command=command,
               affine=checkpoint_affine(checkpoint, "rfprobe dead"))


# ---------------------------------------------------------------- presentation and the registry entry


DEAD_POOLS = {"all": "all", "no_shortcut": "no shortcut", "relu": "relu"}


def tables(ds: xr.Dataset) -> list[Table]:
    """Per checkpoint: the pooled dead/off percentages (from the headline) and each layer's counts."""
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


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "pct" | "num"): the dead and off
    fractions of all BN channels pooled, at each threshold."""
    pool = row["all"]
    return {name.format(t=t): (pool[f"{kind}_frac"][t], "pct")
            for kind, name in (("dead", "|gamma| < {t}"), ("off", "off (also beta <= 0) at {t}")) for t in pool[f"{kind}_frac"]}


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.dead)."""
    from rfprobe.plots.dead import dead_figure

    return dead_figure(ds)
