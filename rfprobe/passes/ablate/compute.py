"""Ablation of normalisation channels by |gamma|, with controls, and re-enabling the channels training disabled.

Every normalisation kind is ablated alike (`rfprobe.graph`): a channel (BatchNorm, GroupNorm, LayerNorm2d,
InstanceNorm) or a feature (LayerNorm, RMSNorm over the last dimension) gets gamma = 0 and beta = 0, so its
output is 0 (beta where beta is kept; RMSNorm has no beta). The `largest` variant is the matching control for
outlier dimensions: the largest-|gamma| channels zeroed.

Every variant edits the affine parameters of a private copy of the model (`copy.deepcopy`), restored from
the original values after each evaluation, so neither the caller's model nor any file changes. Accuracy
and mean cross-entropy (natural log) are measured on the eval data with BN in eval mode.

Channels considered ("eligible") are those of the normalisation layers chosen by `eligible`:
`all` (every norm, shortcut BNs included: the population the paper's ~27-33% disabled count is taken over),
`no-shortcut` (every norm but the projection shortcuts' norms), `relu` (only norms that feed a ReLU directly).
They are laid out network-wide in forward order (layer depth, then channel index); ties in |gamma| keep
that order.

Variants (T = `prune_below`, k = #{eligible channels with |gamma| < T}):
- `baseline`: the unmodified model.
- `pruned`: the k channels with |gamma| < T get gamma = 0 and beta = 0 (with `keep_beta`: gamma = 0,
  beta kept, so the channel outputs the constant beta instead of 0).
- `random`: k eligible channels drawn uniformly without replacement (torch.randperm seeded by each
  seed), same operation as `pruned`.
- `largest`: the k eligible channels of largest |gamma|, same operation.
- `reenabled` (optional): the same k channels get gamma := a value (below) and keep their trained beta.
  Values: `init` = the channel's gamma in the run's init checkpoint (init.pt beside the checkpoint), used
  when one was given; `median` = the median |gamma| of the layer's live channels (|gamma| >= T) in the
  trained model; `one` = 1. `init` falls back to `median` when there is no init checkpoint, and `median`
  falls back to 1 for a layer without live channels; the counts actually used are recorded.
- curve: for each fraction f, the round(f * N) eligible channels of smallest |gamma| (N = eligible
  channels), and the same number drawn at random (per seed the random sets are nested: prefixes of one
  permutation), same operation as `pruned`. A fraction that prunes no channel is the baseline itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import xarray as xr
from rich import box
from rich.table import Table

from rfprobe.data import Data, batches
from rfprobe.errors import RfprobeError
from rfprobe.options import defaults
from rfprobe.passes.base import ABLATE_FRACTIONS
from rfprobe.progress import track
from rfprobe.report_tables import pct
from rfprobe.results import layer_coords, provenance
from rfprobe.graph import NormSite, affine_parameters, find_sites
from rfprobe.passes.ablate import DATA, OPTIONS



ELIGIBLE = ("all", "no-shortcut", "relu")
REENABLE_VALUES = ("init", "median", "one")
FRACTIONS = ABLATE_FRACTIONS


def eligible_bns(bn: list[NormSite], which: str) -> list[NormSite]:
    """The normalisation layers whose channels may be pruned (see the module docstring)."""
    if which == "all":
        return list(bn)
    if which == "no-shortcut":
        return [s for s in bn if s.role != "shortcut"]
    if which == "relu":
        return [s for s in bn if s.role == "relu"]
    raise RfprobeError(f"unknown eligible set {which!r}; choose one of {', '.join(ELIGIBLE)}")


@dataclass
class _Channels:
    """Eligible channels laid out network-wide: BN `layers[i]` owns entries `offsets[i]:offsets[i+1]`."""

    layers: list[str]
    offsets: np.ndarray
    gamma: torch.Tensor  # float64 (N,) trained gamma
    beta: torch.Tensor

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def layer_counts(self, selected: torch.Tensor) -> np.ndarray:
        return np.add.reduceat(selected.cpu().numpy().astype(np.int64), self.offsets[:-1]) if len(self) else np.zeros(0)


def _channels(model: nn.Module, sites: list[NormSite]) -> _Channels:
    modules = dict(model.named_modules())
    gammas, betas = [], []
    for site in sites:
        gamma, beta = affine_parameters(modules[site.name])
        if gamma is None:
            raise RfprobeError(f"{site.name} has no affine parameters (affine=False): nothing to prune")
        gammas.append(gamma.detach().double().cpu())
        betas.append(beta.detach().double().cpu() if beta is not None else torch.zeros(site.n_channels, dtype=torch.float64))
    offsets = np.concatenate([[0], np.cumsum([s.n_channels for s in sites])]).astype(np.int64)
    empty = torch.zeros(0, dtype=torch.float64)
    return _Channels([s.name for s in sites], offsets, torch.cat(gammas) if gammas else empty,
                     torch.cat(betas) if betas else empty)


def evaluate(model: nn.Module, data: Data, batch_size: int, device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` (in eval mode) over the examples of `data` it sees (an image
    folder's undecodable files are not among them)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    with torch.inference_mode():
        for x, y in batches(data, batch_size, device):
            logits = model(x)
            correct += (logits.argmax(1) == y).sum()
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            seen += int(y.shape[0])
    return float(correct) / max(seen, 1), float(loss) / max(seen, 1)


def set_channels(model: nn.Module, channels: _Channels, selected: torch.Tensor, gamma: torch.Tensor | float = 0.0,
                 beta: torch.Tensor | float | None = 0.0) -> None:
    """For the `selected` (bool, N) eligible channels of `model`: gamma := `gamma`, beta := `beta`
    (scalars, or (N,) tensors indexed like the channels); `beta=None` keeps beta."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, name in enumerate(channels.layers):
            start, stop = channels.offsets[i], channels.offsets[i + 1]
            mask = selected[start:stop]
            if not bool(mask.any()):
                continue
            weight, bias = affine_parameters(modules[name])
            mask = mask.to(weight.device)
            for param, value in ((weight, gamma), (bias, beta)):
                if value is None or param is None:
                    continue
                if isinstance(value, torch.Tensor):
                    param[mask] = value[start:stop].to(param)[mask]
                else:
                    param[mask] = value


def _restore(model: nn.Module, channels: _Channels) -> None:
    set_channels(model, channels, torch.ones(len(channels), dtype=torch.bool), channels.gamma, channels.beta)


def reenable_values(channels: _Channels, small: torch.Tensor, threshold: float, how: str,
                    init_gamma: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
    """The gamma each `small` channel gets back (module docstring), and how many came from each source."""
    if how not in REENABLE_VALUES:
        raise RfprobeError(f"unknown --reenable-value {how!r}; choose one of {', '.join(REENABLE_VALUES)}")
    values = torch.ones(len(channels), dtype=torch.float64)
    source = np.full(len(channels), "one", dtype=object)
    if how in ("init", "median"):
        for i in range(len(channels.layers)):
            start, stop = channels.offsets[i], channels.offsets[i + 1]
            live = channels.gamma[start:stop].abs()
            live = live[live >= threshold]
            if len(live):
                values[start:stop] = float(np.median(live.numpy()))
                source[start:stop] = "median"
    if how == "init" and init_gamma is not None:
        values = init_gamma.double().clone()
        source[:] = "init"
    chosen = small.numpy()
    counts = {name: int(((source == name) & chosen).sum()) for name in REENABLE_VALUES}
    return values, counts


def _init_gamma(init_model: nn.Module | None, channels: _Channels) -> torch.Tensor | None:
    if init_model is None:
        return None
    modules = dict(init_model.named_modules())
    parts = []
    for name, start, stop in zip(channels.layers, channels.offsets[:-1], channels.offsets[1:]):
        gamma = affine_parameters(modules[name])[0] if name in modules else None
        if gamma is None or gamma.numel() != stop - start:
            raise RfprobeError(f"the init checkpoint does not match the model: no norm {name} with {stop - start} channels")
        parts.append(gamma.detach().double().cpu())
    return torch.cat(parts)


def parse_fractions(fractions) -> tuple[float, ...]:
    """Sorted distinct fractions in [0, 1], from numbers or comma-separated text ('' for none)."""
    if isinstance(fractions, str):
        try:
            fractions = [float(f) for f in fractions.split(",") if f.strip()]
        except ValueError:
            raise RfprobeError(f"--fractions must be comma-separated numbers, got {fractions!r}") from None
    fractions = tuple(sorted(set(float(f) for f in fractions)))
    if any(not 0 <= f <= 1 for f in fractions):
        raise RfprobeError(f"--fractions must lie in [0, 1], got {', '.join(f'{f:g}' for f in fractions)}")
    return fractions


_D = defaults(OPTIONS)
"""the defaults of `run` and `check_options`: the declared options' (the CLI's), so a notebook's call and the
command line compute the same numbers"""


def check_options(prune_below: float = _D["prune_below"], seeds: int = _D["seeds"], fractions=FRACTIONS,
                  eligible: str = _D["eligible"], reenable_value: str = _D["reenable_value"]) -> tuple[float, ...]:
    """Refuse (one line) bad options before any work; returns the parsed curve fractions."""
    if not (np.isfinite(prune_below) and prune_below > 0):
        raise RfprobeError(f"--prune-below must be finite and > 0, got {prune_below:g}")
    if seeds < 1:
        raise RfprobeError(f"--seeds must be at least 1, got {seeds}")
    if eligible not in ELIGIBLE:
        raise RfprobeError(f"unknown --eligible {eligible!r}; choose one of {', '.join(ELIGIBLE)}")
    if reenable_value not in REENABLE_VALUES:
        raise RfprobeError(f"unknown --reenable-value {reenable_value!r}; choose one of {', '.join(REENABLE_VALUES)}")
    return parse_fractions(fractions)


def run(model: nn.Module, data: Data, *, prune_below: float = _D["prune_below"], keep_beta: bool = _D["keep_beta"],
        seeds: int = _D["seeds"], fractions=FRACTIONS, reenable: bool = _D["reenable_pruned"],
        reenable_value: str = _D["reenable_value"], init_model: nn.Module | None = None,
        eligible: str = _D["eligible"], batch_size: int = DATA["batch_size"], device: str | torch.device = "cpu",
        checkpoint=None,
        init_checkpoint=None, command=None, progress: bool = False) -> xr.Dataset:
    """Accuracy and loss of `model` on `data` under every variant of the module docstring."""
    fractions = check_options(prune_below, seeds, fractions, eligible, reenable_value)
    sites = find_sites(model)
    chosen = eligible_bns(sites.norm, eligible)
    if not chosen:
        raise RfprobeError(f"no normalisation layers are eligible for pruning with --eligible {eligible}")
    channels = _channels(model, chosen)
    n = len(channels)
    work = copy.deepcopy(model).eval()
    magnitude = channels.gamma.abs()
    small = magnitude < prune_below
    k = int(small.sum())
    by_size = torch.argsort(magnitude, stable=True)
    prune_beta = None if keep_beta else 0.0

    def mask_of(index: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[index] = True
        return mask

    permutations = [torch.randperm(n, generator=torch.Generator().manual_seed(seed)) for seed in range(seeds)]
    jobs: list[tuple[str, int, torch.Tensor, object, object]] = []  # (key, seed, mask, gamma, beta)
    jobs.append(("pruned", -1, small, 0.0, prune_beta))
    jobs.append(("largest", -1, mask_of(by_size[n - k:]), 0.0, prune_beta))
    jobs += [("random", seed, mask_of(perm[:k]), 0.0, prune_beta) for seed, perm in enumerate(permutations)]
    reenable_counts = {}
    if reenable:
        values, reenable_counts = reenable_values(channels, small, prune_below, reenable_value,
                                                  _init_gamma(init_model, channels))
        jobs.append(("reenabled", -1, small, values, None))
    counts = [int(round(f * n)) for f in fractions]
    for j, c in enumerate(counts):
        jobs.append((f"smallest:{j}", -1, mask_of(by_size[:c]), 0.0, prune_beta))
        jobs += [(f"random:{j}", seed, mask_of(perm[:c]), 0.0, prune_beta) for seed, perm in enumerate(permutations)]

    results: dict[tuple[str, int], tuple[float, float]] = {}
    baseline = evaluate(work, data, batch_size, device)
    for key, seed, mask, gamma, beta in track(jobs, len(jobs), "ablate", progress):
        if not bool(mask.any()):
            results[key, seed] = baseline
            continue
        set_channels(work, channels, mask, gamma, beta)
        try:
            results[key, seed] = evaluate(work, data, batch_size, device)
        finally:
            _restore(work, channels)

    variants = ["baseline", "pruned", "random", "largest"] + (["reenabled"] if reenable else [])
    scores = np.full((2, len(variants), seeds), np.nan)
    for v, name in enumerate(variants):
        for seed in range(seeds):
            scores[:, v, seed] = baseline if name == "baseline" else results[name, seed if name == "random" else -1]
    curve = np.full((2, 2, len(fractions), seeds), np.nan)
    for j in range(len(fractions)):
        for seed in range(seeds):
            curve[:, 0, j, seed] = results[f"smallest:{j}", -1]
            curve[:, 1, j, seed] = results[f"random:{j}", seed]

    position = [next((i for i, s in enumerate(chosen) if s.name == site.name), None) for site in sites.norm]

    def per_layer(mask: torch.Tensor) -> np.ndarray:
        counts_ = channels.layer_counts(mask)
        return np.array([0 if i is None else counts_[i] for i in position], dtype=np.int64)

    n_changed = [0, k, k, k] + ([k] if reenable else [])
    eligible_names = {s.name for s in chosen}
    operation = "gamma=0, beta kept" if keep_beta else "gamma=0, beta=0"
    init_desc = "" if init_checkpoint is None else f"{init_checkpoint.path} (sha256 {init_checkpoint.sha256})"
    attrs = provenance(
        "ablate", checkpoint, dataset=data.name, split=data.split, n_examples=len(data), device=str(device),
        command=command, **data.normalization_attrs(), prune_below=float(prune_below), prune_operation=operation, eligible_bns=eligible,
        eligible_definition={"all": "every normalisation layer, shortcut BNs included",
                             "no-shortcut": "every normalisation layer except projection-shortcut ones",
                             "relu": "only normalisation layers that feed a ReLU directly"}[eligible],
        pruned_definition=f"eligible channels with |gamma| < {prune_below:g}; {operation}",
        random_definition="the same number of eligible channels, uniformly without replacement, "
                          "torch.randperm(N, generator seeded with the seed), same operation",
        largest_definition="the same number of eligible channels with the largest |gamma|, same operation",
        curve_definition="per fraction f: the round(f*N) eligible channels of smallest |gamma| (ties in forward "
                         "order), and as many random ones (prefixes of one permutation per seed), same operation",
        draw_definition="the draw dimension indexes the random control's draws: draw d uses seed d; the "
                        "deterministic variants (baseline, pruned, largest, reenabled, curve=smallest) do not depend "
                        "on it: their one value is repeated along draw",
        reenable_definition=("" if not reenable else
                             f"the channels of `pruned` get gamma back ({reenable_value} requested: init = their "
                             "gamma in the run's init checkpoint, median = median |gamma| of the layer's live "
                             f"channels (|gamma| >= {prune_below:g}), one = 1; init falls back to median without an "
                             "init checkpoint, median to 1 without live channels) and keep their trained beta"),
        reenable_value=reenable_value if reenable else "",
        reenable_sources=", ".join(f"{key}: {value}" for key, value in reenable_counts.items()),
        init_checkpoint=init_desc,
        loss_definition="mean cross-entropy (natural log) over the eval examples",
    )
    return xr.Dataset(
        {
            "accuracy": (("variant", "draw"), scores[0]),
            "loss": (("variant", "draw"), scores[1]),
            "n_changed": (("variant",), np.array(n_changed, dtype=np.int64)),
            "curve_accuracy": (("curve", "fraction", "draw"), curve[0]),
            "curve_loss": (("curve", "fraction", "draw"), curve[1]),
            "curve_n_pruned": (("fraction",), np.array(counts, dtype=np.int64)),
            "n_eligible": ((), n),
            "pruned_fraction": ((), k / n),
            "eligible": (("layer",), np.array([s.name in eligible_names for s in sites.norm])),
            "small_gamma_count": (("layer",), per_layer(small)),
            "largest_count": (("layer",), per_layer(jobs[1][2])),
            "random_count": (("draw", "layer"), np.stack([per_layer(jobs[2 + seed][2]) for seed in range(seeds)])),
        },
        coords={"variant": np.array(variants, dtype=object), "draw": np.arange(seeds),
                "curve": np.array(["smallest", "random"], dtype=object), "fraction": np.array(fractions),
                **layer_coords(sites.norm)},
        attrs=attrs,
    )


def headline(ds: xr.Dataset) -> dict[str, dict]:
    """The numbers the CLI prints, per checkpoint label (JSON-able): each variant's accuracy and loss
    (mean over seeds, and the accuracy's std over seeds for the random control) and the curve."""
    out = {}
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        variants = {}
        for variant in one["variant"].values:
            v = one.sel(variant=variant)
            random = variant == "random"
            variants[str(variant)] = {
                "n_changed": int(v["n_changed"]), "accuracy": float(v["accuracy"].mean("draw")),
                "accuracy_std": float(v["accuracy"].std("draw")) if random else 0.0,
                "loss": float(v["loss"].mean("draw")), "n_seeds": int(v.sizes["draw"]) if random else 1}
        curve = [{"fraction": float(f), "n_pruned": int(one["curve_n_pruned"].sel(fraction=f)),
                  "smallest": float(one["curve_accuracy"].sel(curve="smallest", fraction=f).mean("draw")),
                  "random": float(one["curve_accuracy"].sel(curve="random", fraction=f).mean("draw"))}
                 for f in one["fraction"].values]
        out[str(label)] = {"n_eligible": int(one["n_eligible"]), "n_pruned": int(one["n_changed"].sel(variant="pruned")),
                           "pruned_fraction": float(one["pruned_fraction"]), "variants": variants, "curve": curve}
    return out




def validate(options: dict, n_points: int | None = None) -> dict:
    fractions = check_options(options["prune_below"], options["seeds"], options["fractions"], options["eligible"],
                              options["reenable_value"])
    return {**options, "fractions": fractions}


def run_checkpoint(checkpoint, data: Data, options: dict | None = None, *, batch_size: int = 500, device="cpu",
            command=None, progress: bool = False, load=None) -> xr.Dataset:
    """`run` on one checkpoint; re-enabling to `init` reads `init.pt` beside it when there is one (through
    `load(path)`, default rfprobe.checkpoint.load_checkpoint)."""
    from rfprobe.checkpoint import load_checkpoint

    o = validate({**defaults(OPTIONS), **(options or {})})
    init_path = checkpoint.path.parent / "init.pt"
    init = None
    if o["reenable_pruned"] and o["reenable_value"] == "init" and init_path.exists():
        init = (load or (lambda p: load_checkpoint(p, device=device)))(init_path)
    return run(checkpoint.model, data, prune_below=o["prune_below"], keep_beta=o["keep_beta"], seeds=o["seeds"],
               fractions=o["fractions"], reenable=o["reenable_pruned"], reenable_value=o["reenable_value"],
               init_model=init.model if init else None, eligible=o["eligible"], batch_size=batch_size,
               device=device, checkpoint=checkpoint, init_checkpoint=init, command=command, progress=progress)


# ---------------------------------------------------------------- presentation and the registry entry


def tables(ds: xr.Dataset) -> list[Table]:
    """Per checkpoint: every variant's accuracy and loss, then the pruning curve."""
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


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "pct" | "num"): each variant's
    accuracy (mean over draws) and the pruned fraction."""
    out = {f"accuracy {variant}": (v["accuracy"], "pct") for variant, v in row["variants"].items()}
    out["pruned fraction"] = (row["pruned_fraction"], "pct")
    return out


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.ablate)."""
    from rfprobe.plots.ablate import ablate_figure

    return ablate_figure(ds)
