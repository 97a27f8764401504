"""`rfprobe affine`: the distribution of normalisation layers' affine parameters (no data needed).

For every normalisation layer (forward order, `rfprobe.graph`: BatchNorm, frozen BN, GroupNorm, LayerNorm,
LayerNorm2d, RMSNorm, InstanceNorm; its `kind` and `axis` are coordinates) it reads gamma (`weight`) and beta
(`bias`) and returns one Dataset holding

- `gamma`, `beta` on `(layer, channel)`, NaN-padded to the widest layer;
- `gamma_hist`, `beta_hist` on `(layer, bin)`: channel counts per bin, `np.histogram` semantics (bins
  half-open `[e_i, e_{i+1})`, the last one closed), on the edges `gamma_bin_edges` / `beta_bin_edges`
  (`bin_edge` dim). `run_checkpoints` computes the edges once from the joint range of every checkpoint
  of the invocation, so the histograms of several checkpoints share edges and stack exactly;
- per layer and pooled over all BN channels (each channel weighs one; pooled variables are prefixed
  `pooled_` and have no `layer` dim): mean and population std (ddof=0) of gamma and beta, quantiles of
  |gamma| (`quantile` dim, numpy's linear interpolation), and the fraction of channels with gamma < 0
  and with beta < 0;
- **outlier dimensions**: `gamma_outlier` / `beta_outlier` on `(layer, channel)` (1 where |gamma_c| >
  k * median_c'(|gamma_c'|) over the layer's channels, likewise for beta), their counts per layer
  (`n_gamma_outliers`, `n_beta_outliers`) and pooled; k is `--outlier-k` (default 3).

A layer without a parameter computes with gamma = 1 (no weight) or beta = 0 (no bias: RMSNorm, a BN with
`affine=False`) and is recorded so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np
import torch.nn as nn
import xarray as xr
from rich.table import Table

from rfprobe.errors import RfprobeError
from rfprobe.options import defaults
from rfprobe.passes.base import AFFINE_BINS, MAX_BINS
from rfprobe.report_tables import checkpoint_table, pct
from rfprobe.results import layer_coords, nan_padded, provenance, stack
from rfprobe.graph import NormSite, Sites, affine_parameters, find_sites, norm_kind
from rfprobe.passes.affine import OPTIONS



QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
DEFAULT_BINS = AFFINE_BINS
AFFINE_DEFINITION = ("gamma = the normalisation layer's weight, beta = its bias (BatchNorm in eval mode: y = gamma * "
                     "(x - running_mean) / sqrt(running_var + eps) + beta; GroupNorm / LayerNorm / InstanceNorm: the "
                     "same with each example's own statistics; RMSNorm: y = gamma * x / rms(x)); a layer without a "
                     "weight computes gamma = 1, without a bias beta = 0 (RMSNorm, affine=False), recorded so")
OUTLIER_DEFINITION = ("outlier dimension: |gamma_c| > k * median over the layer's channels of |gamma| (likewise beta); "
                      "k = outlier_k. The high-magnitude LayerNorm dimensions of Kovaleva et al. 2021 (BERT Busters), "
                      "found by a robust scale; k = 3 is rfprobe's default, a three-fold excess over the typical "
                      "magnitude")
DEFAULT_OUTLIER_K = defaults(OPTIONS)["outlier_k"]


@dataclass
class NormAffine:
    """The normalisation layers of one model (forward order) and their gamma/beta as float64 arrays, one per layer."""

    sites: list[NormSite]
    gamma: list[np.ndarray]
    beta: list[np.ndarray]

    def coords(self) -> dict:
        width = max(len(g) for g in self.gamma)
        return {**layer_coords(self.sites), "channel": ("channel", np.arange(width))}



def norm_affine(model: nn.Module, sites=None, what: str = "this pass") -> NormAffine:
    """Read gamma and beta of every normalisation layer of `model` in forward order (a missing weight reads
    as 1, a missing bias as 0: what the layer computes with).

    Raises RfprobeError (one line) for a model with no normalisation layers: its result would be empty."""
    if sites is None and not any(norm_kind(m) is not None for m in model.modules()):
        sites = Sites([], [], None, None)
    sites = sites if sites is not None else find_sites(model)
    if not sites.norm:
        arch = getattr(model, "rfprobe_arch", type(model).__name__)
        raise RfprobeError(f"{arch} has no normalisation layers in its forward pass (BatchNorm, GroupNorm, LayerNorm, "
                           f"RMSNorm, InstanceNorm), so there are no gamma/beta for {what} to read")
    modules = sites.norm_modules(model)
    gamma, beta = [], []
    for site in sites.norm:
        g, b = affine_parameters(modules[site.name])
        c = site.n_channels
        gamma.append(g.detach().double().cpu().numpy().copy() if g is not None else np.ones(c))
        beta.append(b.detach().double().cpu().numpy().copy() if b is not None else np.zeros(c))
    return NormAffine(list(sites.norm), gamma, beta)



def outliers(values: list[np.ndarray], k: float) -> list[np.ndarray]:
    """Per layer, 1.0 where |v_c| > k * median(|v|) over the layer's finite values, else 0.0."""
    out = []
    for v in values:
        magnitude = np.abs(v)
        finite = magnitude[np.isfinite(magnitude)]
        median = float(np.median(finite)) if finite.size else np.nan
        out.append((magnitude > k * median).astype(np.float64))
    return out


def shared_edges(arrays: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """`bins + 1` equal-width edges spanning the finite values of all `arrays` (a degenerate range is
    widened to +-0.5 around its value; no finite values at all gives [-1, 1])."""
    check_options(bins)
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.empty(0)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _histograms(values: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    return np.stack([np.histogram(v[np.isfinite(v)], edges)[0] for v in values]).astype(np.int64)


def _summaries(prefix: str, padded: np.ndarray, dims: tuple[str, ...]) -> dict:
    """mean, std (ddof=0) and fraction < 0 over the last axis of `padded` (NaN = padding, ignored)."""
    count = np.sum(~np.isnan(padded), axis=-1)
    return {
        f"{prefix}_mean": (dims, np.nanmean(padded, axis=-1)),
        f"{prefix}_std": (dims, np.nanstd(padded, axis=-1)),
        f"{prefix}_frac_negative": (dims, np.sum(padded < 0, axis=-1) / count),
    }


def run(model: nn.Module | None, *, gamma_edges: np.ndarray | None = None, beta_edges: np.ndarray | None = None,
        bins: int = DEFAULT_BINS, checkpoint=None, sites=None, command=None, affine: NormAffine | None = None,
        outlier_k: float = DEFAULT_OUTLIER_K) -> xr.Dataset:
    """The affine Dataset of one model (module docstring). Edges default to this model's own range."""
    check_outlier_k(outlier_k)
    affine = affine or norm_affine(model, sites, "rfprobe affine")
    gamma_edges = shared_edges(affine.gamma, bins) if gamma_edges is None else np.asarray(gamma_edges, float)
    beta_edges = shared_edges(affine.beta, bins) if beta_edges is None else np.asarray(beta_edges, float)
    if len(gamma_edges) != len(beta_edges):
        raise RfprobeError("gamma and beta histograms need the same number of bins")
    gamma, beta = nan_padded(affine.gamma), nan_padded(affine.beta)
    pooled_gamma, pooled_beta = np.concatenate(affine.gamma), np.concatenate(affine.beta)
    abs_gamma = np.abs(gamma)
    gamma_outliers, beta_outliers = outliers(affine.gamma, outlier_k), outliers(affine.beta, outlier_k)
    n_gamma_outliers = np.array([int(o.sum()) for o in gamma_outliers], dtype=np.int64)
    n_beta_outliers = np.array([int(o.sum()) for o in beta_outliers], dtype=np.int64)
    data = {
        "gamma": (("layer", "channel"), gamma),
        "beta": (("layer", "channel"), beta),
        "gamma_hist": (("layer", "bin"), _histograms(affine.gamma, gamma_edges)),
        "beta_hist": (("layer", "bin"), _histograms(affine.beta, beta_edges)),
        **_summaries("gamma", gamma, ("layer",)),
        **_summaries("beta", beta, ("layer",)),
        "abs_gamma_quantiles": (("layer", "quantile"), np.nanquantile(abs_gamma, QUANTILES, axis=1).T),
        **_summaries("pooled_gamma", pooled_gamma, ()),
        **_summaries("pooled_beta", pooled_beta, ()),
        "pooled_abs_gamma_quantiles": (("quantile",), np.nanquantile(np.abs(pooled_gamma), QUANTILES)),
        "pooled_n_channels": ((), int(pooled_gamma.size)),
        "gamma_outlier": (("layer", "channel"), nan_padded(gamma_outliers, gamma.shape[1])),
        "beta_outlier": (("layer", "channel"), nan_padded(beta_outliers, gamma.shape[1])),
        "n_gamma_outliers": (("layer",), n_gamma_outliers),
        "n_beta_outliers": (("layer",), n_beta_outliers),
        "pooled_n_gamma_outliers": ((), int(n_gamma_outliers.sum())),
        "pooled_n_beta_outliers": ((), int(n_beta_outliers.sum())),
    }
    coords = {**affine.coords(), "quantile": ("quantile", np.array(QUANTILES)), "bin": ("bin", np.arange(len(gamma_edges) - 1)),
              "gamma_bin_edges": ("bin_edge", gamma_edges), "beta_bin_edges": ("bin_edge", beta_edges)}
    attrs = provenance("affine", checkpoint, command=command, affine_definition=AFFINE_DEFINITION,
                       histogram_definition="channel counts per bin, bins [e_i, e_i+1) with the last closed; "
                                            "edges equal-width over the joint finite range of all checkpoints",
                       std_definition="population standard deviation (ddof=0) over channels",
                       quantile_definition="numpy linear interpolation over the layer's (or all) channels",
                       pooled_definition="over every channel of every normalisation layer, each channel weighing "
                                         "one (layer-scale parameters are not normalisation layers)",
                       outlier_definition=OUTLIER_DEFINITION, outlier_k=float(outlier_k), bins=len(gamma_edges) - 1)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def check_options(bins: int = DEFAULT_BINS) -> int:
    """Refuse (one line) a bin count outside 1..MAX_BINS."""
    if not 1 <= bins <= MAX_BINS:
        raise RfprobeError(f"--bins must be between 1 and {MAX_BINS}, got {bins}")
    return bins


def check_outlier_k(k: float) -> float:
    """Refuse (one line) an outlier factor that is not finite and > 0."""
    if not (np.isfinite(k) and k > 0):
        raise RfprobeError(f"--outlier-k must be finite and > 0, got {k}")
    return float(k)


def run_checkpoints(checkpoints: Iterable, labels: Sequence[str], *, bins: int = DEFAULT_BINS, command=None,
                    outlier_k: float = DEFAULT_OUTLIER_K) -> xr.Dataset:
    """`run` for each checkpoint with histogram edges shared by all of them, stacked on `checkpoint`.
    `checkpoints` may be a generator: only each one's gamma/beta are kept, never two models at once."""
    check_options(bins)
    kept = []
    for ckpt in checkpoints:
        kept.append((replace(ckpt, model=None), checkpoint_affine(ckpt, "rfprobe affine")))
    gamma_edges = shared_edges([g for _, a in kept for g in a.gamma], bins)
    beta_edges = shared_edges([b for _, a in kept for b in a.beta], bins)
    return stack([run(None, gamma_edges=gamma_edges, beta_edges=beta_edges, checkpoint=ckpt, command=command,
                      affine=affine, outlier_k=outlier_k) for ckpt, affine in kept], labels)


def rebin(results: Sequence[xr.Dataset]) -> list[xr.Dataset]:
    """Per-checkpoint results (each on its own edges) with their histograms recomputed on edges shared by all
    of them, from the stored per-channel gamma/beta: what `run_checkpoints` gives for the same checkpoints."""
    bins = {int(ds.sizes["bin"]) for ds in results}
    if len(bins) != 1:
        raise RfprobeError(f"affine results with different bin counts ({', '.join(map(str, sorted(bins)))}) cannot share edges")
    n_bins = bins.pop()
    out = []
    values = {name: [ds[name].values[i][np.isfinite(ds[name].values[i])] for ds in results
                     for i in range(ds.sizes["layer"])] for name in ("gamma", "beta")}
    edges = {name: shared_edges(values[name], n_bins) for name in values}
    for ds in results:
        ds = ds.copy()
        for name in ("gamma", "beta"):
            rows = [row[np.isfinite(row)] for row in ds[name].values]
            ds[f"{name}_hist"] = (("layer", "bin"), _histograms(rows, edges[name]))
            ds = ds.assign_coords({f"{name}_bin_edges": ("bin_edge", edges[name])})
        out.append(ds)
    return out


def checkpoint_affine(ckpt, what: str) -> NormAffine:
    """`norm_affine` of a loaded checkpoint's model, errors prefixed with the checkpoint's path."""
    try:
        return norm_affine(ckpt.model, what=what)
    except RfprobeError as e:
        raise RfprobeError(f"{ckpt.path}: {e}") from None


def headline(ds: xr.Dataset) -> dict[str, dict]:
    """The summary per checkpoint label (for the table and --json): layers, channels, pooled mean / std /
    fraction negative of gamma and beta, and quantiles of |gamma|."""
    q = {float(x): i for i, x in enumerate(ds["quantile"].values)}
    summary = {}
    for lab in ds["checkpoint"].values:
        one = ds.sel(checkpoint=lab)
        quantiles = one["pooled_abs_gamma_quantiles"].values
        summary[str(lab)] = {
            "n_layers": int(np.isfinite(np.asarray(one["n_channels"].values, float)).sum()),
            "n_channels": int(one["pooled_n_channels"]),
            **{k: float(one[f"pooled_{k}"]) for k in ("gamma_mean", "gamma_std", "gamma_frac_negative",
                                                     "beta_mean", "beta_std", "beta_frac_negative")},
            "abs_gamma_quantiles": {f"{x:g}": float(quantiles[i]) for x, i in q.items()},
            **({"gamma_outliers": int(one["pooled_n_gamma_outliers"]), "beta_outliers": int(one["pooled_n_beta_outliers"])}
               if "pooled_n_gamma_outliers" in one else {}),
        }
    return summary




def validate(options: dict, n_points: int | None = None) -> dict:
    """`options` (OPTIONS' names) checked (one line on a bad value)."""
    return {**options, "bins": check_options(options["bins"]), "outlier_k": check_outlier_k(options["outlier_k"])}


def run_checkpoint(checkpoint, data=None, options: dict | None = None, *, command=None, **_) -> xr.Dataset:
    """One checkpoint's result with its own histogram edges (`run_checkpoints` shares edges between several)."""
    options = validate({**defaults(OPTIONS), **(options or {})})
    return run(None, bins=options["bins"], checkpoint=checkpoint, affine=checkpoint_affine(checkpoint, "rfprobe affine"),
               command=command, outlier_k=options["outlier_k"])


# ---------------------------------------------------------------- presentation and the registry entry


def tables(ds: xr.Dataset) -> list[Table]:
    """The CLI table: pooled gamma/beta summaries per checkpoint (from `headline`)."""
    rows = [("norm layers", lambda s: str(s["n_layers"])), ("channels", lambda s: str(s["n_channels"])),
            ("gamma mean", lambda s: f"{s['gamma_mean']:.4g}"), ("gamma std", lambda s: f"{s['gamma_std']:.4g}"),
            ("gamma < 0", lambda s: pct(s["gamma_frac_negative"])),
            *[(f"|gamma| q{k}", lambda s, k=k: f"{s['abs_gamma_quantiles'][k]:.3g}") for k in ("0", "0.05", "0.5", "0.95", "1")],
            ("beta mean", lambda s: f"{s['beta_mean']:.4g}"), ("beta std", lambda s: f"{s['beta_std']:.4g}"),
            ("beta < 0", lambda s: pct(s["beta_frac_negative"])),
            (f"outliers gamma/beta (> {ds.attrs.get('outlier_k', DEFAULT_OUTLIER_K):g}x median)",
             lambda s: f"{s.get('gamma_outliers', '-')}/{s.get('beta_outliers', '-')}")]
    return [checkpoint_table("normalisation gamma / beta, pooled over all norm channels", headline(ds), rows)]


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "pct" | "num")."""
    return {"gamma mean": (row["gamma_mean"], "num"), "|gamma| median": (row["abs_gamma_quantiles"]["0.5"], "num"),
            "gamma < 0": (row["gamma_frac_negative"], "pct"), "beta mean": (row["beta_mean"], "num")}


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.affine)."""
    from rfprobe.plots.affine import affine_figure

    return affine_figure(ds)
