"""Activation sparsity at every activation site over a dataset, in one streaming forward pass (docs/science.md section 1).

Probes are inserted into a `torch.fx` trace of the model right after each activation node (ReLU, ReLU6,
LeakyReLU, GELU, SiLU, Hardswish, Mish; `rfprobe.graph`), so every site is seen exactly (CIFAR ResNets call
`F.relu`, torchvision reuses one ReLU module: module hooks would miss or merge sites).

One definition serves every kind: a channel is *inactive* at a position where its pre-activation z <= 0.
For ReLU and ReLU6 that is exactly where the output is 0, so they are probed on the output (as always);
for the others a probe before the activation reads z (before an in-place activation can overwrite it) and
one after it reads the output for the mean and maximum. Below, "a == 0" reads "z <= 0" for those kinds
(`zero_fraction` is the inactive fraction, `dead` a channel never > 0). A site's channels lie on its `axis`
dimension: 1 after a conv or channel norm, the last for tokens (B, N, D) and channels-last tensors. A probe reduces its input at once, on the device, into per-channel accumulators (int64
counts, float64 sums) and keeps no reference to it, so later in-place ops cannot change what was counted
and memory does not grow with the number of examples. BN is in eval mode; everything runs under
`torch.inference_mode()`.

For a site with C channels and P positions per channel (H*W, or 1 after a BatchNorm1d), over N examples:

- `zero_fraction[c]`   = #{(n, p): a[n, c, p] == 0} / (N P)
- `mean_activation[c]` = sum_{n,p} a[n, c, p] / (N P);  `max_activation[c]` = max_{n,p} a[n, c, p]
- `dead[c]`            = 1 if a[n, c, p] == 0 for every n and p (zero_fraction == 1), else 0
- `example_zero_fraction[c]` = #{n: a[n, c, :] == 0 everywhere} / N
- per example n: k_n = #{c: a[n, c, :] == 0 everywhere}; its fraction k_n / C is histogrammed in `bins`
  equal bins on [0, 1] (bin i holds i/bins <= k/C < (i+1)/bins, the last bin includes 1), assigned with
  integer arithmetic (floor(k * bins / C)) so no fraction falls on the wrong side of an edge; pooled over
  the network the fraction is sum_sites k_n / sum_sites C.
"""

from __future__ import annotations


import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import xarray as xr
from rich.table import Table

from rfprobe.data import Data, batches
from rfprobe.errors import RfprobeError
from rfprobe.options import defaults
from rfprobe.passes.base import GAMMA_THRESHOLDS, MAX_BINS
from rfprobe.progress import track
from rfprobe.report_tables import checkpoint_table, pct
from rfprobe.results import layer_coords, nan_padded, provenance
from rfprobe.graph import ZERO_OUTPUT_KINDS, ActivationSite, affine_parameters, find_sites, trace
from rfprobe.passes.sparsity import OPTIONS



THRESHOLDS = GAMMA_THRESHOLDS
DEFINITIONS = {
    "sparsity_definition": "zero_fraction: fraction of (example, position) ReLU outputs exactly 0, per channel; "
                           "BN in eval mode",
    "dead_definition": "dead: a channel whose ReLU output is exactly 0 for every example and position",
    "example_definition": "per example: fraction of the site's channels whose output is 0 at every position; "
                          "example_zero_fraction[c]: fraction of examples for which channel c is entirely 0",
    "histogram_definition": "example_zero_channel_hist: counts of examples by that per-example fraction k/C in "
                            "equal bins on [0, 1] (bin i: i/bins <= k/C < (i+1)/bins, the last bin includes 1), "
                            "assigned as floor(k*bins/C) in integers",
    "pooled_definition": "pooled_zero_fraction: zeros / outputs over all sites (each output counts once); "
                         "pooled_dead_fraction: dead channels / channels over all sites; pooled example "
                         "fraction: sum over sites of entirely-0 channels / sum of channels, per example",
    "small_gamma_definition": "small-gamma: |gamma| < threshold, gamma = weight of the BN feeding the ReLU "
                              "(a BN without affine parameters counts as gamma=1, beta=0)",
    "add_site_treatment": "sites fed by a residual addition (source=add) or anything but a normalisation layer "
                          "(source=other) have no single gamma: gamma/beta are NaN there and they are left out of "
                          "every small-gamma count (the dead counts include them; bn_dead_count does not)",
    "activation_definition": "inactive: pre-activation z <= 0. relu, relu6: the output is exactly 0 there, and "
                             "the probe reads the output; leaky_relu, gelu, silu, hardswish, mish: the probe reads "
                             "z before the activation (zero_fraction = fraction of z <= 0; dead = z <= 0 at every "
                             "example and position, i.e. the output is never > 0) and the output after it "
                             "(mean_activation, max_activation)",
}


@dataclass
class _Accumulators:
    """Running per-channel reductions of one site (all on the device)."""

    nonzero: torch.Tensor        # float64 (C,): outputs != 0 (NaN if any output was NaN)
    total: torch.Tensor          # float64 (C,)
    maximum: torch.Tensor        # float32 (C,)
    example_zero: torch.Tensor   # int64 (C,): examples for which the channel is entirely 0
    hist: torch.Tensor           # int64 (bins,)
    k_sum: torch.Tensor          # int64 (): sum over examples of entirely-0 channels
    positions: int = 0


@dataclass
class _Shared:
    """State the probes of one pass share: the current batch's per-example count of entirely-0 channels
    summed over sites, and one scratch buffer (sized to the largest activation) for the nonzero indicator,
    so no probe allocates a fresh activation-sized tensor per batch."""

    batch_k: torch.Tensor | None = None
    scratch: torch.Tensor | None = None

    def buffer(self, like: torch.Tensor) -> torch.Tensor:
        n = like.numel()
        if self.scratch is None or self.scratch.numel() < n or self.scratch.dtype != like.dtype \
                or self.scratch.device != like.device:
            self.scratch = torch.empty(n, dtype=like.dtype, device=like.device)
        return self.scratch[:n].view(like.shape)


def row_statistics(flat: torch.Tensor, indicator: torch.Tensor | None = None):
    """For a ReLU output (N, C, P), per (example, channel): the nonzero count, the sum (float32) and the
    maximum. A ReLU output is >= 0 (or NaN), so sign() is its nonzero indicator (NaN channels are flagged
    through the NaN they put in the sum); summing it in float32 is exact (<= 2**24 positions) and ~10x faster
    on CPU than count_nonzero's bool -> int64 reduction. `indicator`: a scratch tensor shaped like `flat` for
    sign's output (eager); torch.compile fuses all three reductions into one read of `flat` instead."""
    nonzero = torch.sign(flat, out=indicator) if indicator is not None else torch.sign(flat)
    return nonzero.sum(2, dtype=torch.float32), flat.sum(2, dtype=torch.float32), flat.amax(2)


def relu_statistics(z: torch.Tensor):
    """relu(z) and `row_statistics` of it, written for torch.compile: one kernel stores relu(z) and reduces
    it per (example, channel) row (the ReLU is applied to z viewed as (N, C, P), as the reductions see it)."""
    flat = torch.relu(z.reshape(z.shape[0], z.shape[1], -1))
    return (flat.view(z.shape), *row_statistics(flat))


_compiled: dict = {}


def compiled(function):
    """`function` through torch.compile, once per process (dynamic shapes: one compile serves every site and
    batch size)."""
    if function not in _compiled:
        _compiled[function] = torch.compile(function, dynamic=True)
    return _compiled[function]


def _channels_first(t: torch.Tensor, dim: int, batch: int | None = None) -> torch.Tensor:
    """`t` as (N, C, P) for a batch of N examples: the channel dimension `dim` second, every other position
    flattened. A value whose first dimension is not the batch is regrouped by example: sequence-first (L, N, ...)
    tensors by moving N first, window-partitioned (N * W, ...) tensors (windowed attention, example-major) by
    folding the windows into the positions; anything else cannot be attributed to examples and is refused."""
    if batch is not None and t.shape[0] != batch:
        if t.ndim > 1 and t.shape[1] == batch and t.shape[0] % batch != 0:
            t, dim = t.movedim(1, 0), (1 if dim == 0 else dim)
        elif t.shape[0] % batch == 0:
            t, dim = t.reshape(batch, t.shape[0] // batch, *t.shape[1:]), dim + 1
        else:
            raise RfprobeError(f"an activation of shape {tuple(t.shape)} has no dimension of the batch size {batch}, so "
                               "its channels cannot be attributed to examples")
    if dim != 1:
        t = t.movedim(dim, 1)
    return t.reshape(t.shape[0], t.shape[1], -1)


class _Probe(nn.Module):
    """Reduces the ReLU output it is given into its accumulators; returns nothing and keeps no reference."""

    def __init__(self, acc: _Accumulators, shared: _Shared, bins: int, fused: bool = False, dim: int = 1):
        super().__init__()
        self.acc, self.shared, self.bins, self.fused, self.dim = acc, shared, bins, fused, dim

    def forward(self, a: torch.Tensor) -> None:
        flat = _channels_first(a, self.dim, self.shared.batch_k.shape[0])
        if self.fused:
            self.accumulate(flat.shape, *compiled(row_statistics)(flat))
        else:
            self.accumulate(flat.shape, *row_statistics(flat, self.shared.buffer(flat)))

    def accumulate(self, shape, nonzero: torch.Tensor, total: torch.Tensor, peak: torch.Tensor) -> None:
        acc = self.acc
        acc.positions = shape[2]
        acc.nonzero += nonzero.sum(0, dtype=torch.float64)
        acc.total += total.sum(0, dtype=torch.float64)
        torch.maximum(acc.maximum, peak.amax(0).float(), out=acc.maximum)
        entirely_zero = peak == 0  # all outputs >= 0, so max == 0 means all 0 (a NaN max is not 0)
        acc.example_zero += entirely_zero.sum(0)
        k = entirely_zero.sum(1)
        acc.k_sum += k.sum()
        index = torch.clamp_max(k * self.bins // shape[1], self.bins - 1)
        acc.hist.index_add_(0, index, torch.ones_like(index))
        self.shared.batch_k += k


def _by_example(t: torch.Tensor, dim: int, batch: int) -> tuple[torch.Tensor, int, int]:
    """`t` as a 3-D view (examples, ., .) and which of its axes holds the channels and which the positions:
    (N, C, P) with positions on axis 2, or, when the channels are the last dimension (tokens, channels-last),
    (N, P, C) with positions on axis 1, which needs no copy."""
    if t.shape[0] == batch and dim == t.ndim - 1 and t.ndim > 2:
        return t.reshape(batch, -1, t.shape[-1]), 2, 1
    return _channels_first(t, dim, batch), 1, 2


class _PreActivationProbe(nn.Module):
    """For an activation whose output is not 0 where it is inactive (GELU, SiLU, ...): reduces the
    pre-activation z into the counts of positions with z > 0 and of entirely inactive channels (max z <= 0;
    a channel holding a NaN has a NaN maximum, so it is never counted inactive)."""

    def __init__(self, probe: _Probe):
        super().__init__()
        self.probe = probe

    def forward(self, z: torch.Tensor) -> None:
        probe, acc = self.probe, self.probe.acc
        flat, channels, positions = _by_example(z, probe.dim, probe.shared.batch_k.shape[0])
        acc.positions = flat.shape[positions]
        # sign(z) clamped at 0 is 1 where z > 0: summed in float32 (exact below 2**24 positions), ~10x faster than a
        # bool count in float64; a NaN stays NaN and marks the channel as the ReLU path does
        acc.nonzero += torch.sign(flat).clamp_min_(0).sum(positions).sum(0, dtype=torch.float64)
        entirely_inactive = flat.amax(positions) <= 0
        acc.example_zero += entirely_inactive.sum(0)
        k = entirely_inactive.sum(1)
        acc.k_sum += k.sum()
        index = torch.clamp_max(k * probe.bins // flat.shape[channels], probe.bins - 1)
        acc.hist.index_add_(0, index, torch.ones_like(index))
        probe.shared.batch_k += k


class _PostActivationProbe(nn.Module):
    """The output side of `_PreActivationProbe`: the sum and maximum of the activation's output."""

    def __init__(self, probe: _Probe):
        super().__init__()
        self.probe = probe

    def forward(self, a: torch.Tensor) -> None:
        flat, _, positions = _by_example(a, self.probe.dim, self.probe.shared.batch_k.shape[0])
        acc = self.probe.acc
        acc.total += flat.sum(positions, dtype=torch.float32).sum(0, dtype=torch.float64)
        torch.maximum(acc.maximum, flat.amax(positions).amax(0).float(), out=acc.maximum)


class _ProbedRelu(nn.Module):
    """A ReLU site's ReLU and its probe in one compiled pass (`relu_statistics`): relu(z) is read once."""

    def __init__(self, probe: _Probe):
        super().__init__()
        self.probe = probe

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a, nonzero, total, peak = compiled(relu_statistics)(z)
        self.probe.accumulate((a.shape[0], a.shape[1], a[0, 0].numel()), nonzero, total, peak)
        return a


def _overwrites_shared_input(node: fx.Node, modules: dict) -> bool:
    """An in-place ReLU whose input has other users: they see its output, so it must stay as it is."""
    if len(node.args[0].users) <= 1:
        return False
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target == "relu_"
    inplace = node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False)
    return node.target in (torch.relu_, torch.nn.functional.relu_) or bool(inplace)


def _instrument(model: nn.Module, relu: list[ActivationSite], bins: int, device,
                compile: bool = False) -> tuple[fx.GraphModule, list[_Accumulators], _Shared]:
    """A fresh fx trace of `model` (sharing its parameters) with a probe after each ReLU/ReLU6 site's node, or
    with `compile`, each such ReLU replaced by a `_ProbedRelu` (where that keeps the graph's meaning); other
    activations get a probe of their input before them and of their output after them."""
    graph_module = trace(model)
    nodes = {node.name: node for node in graph_module.graph.nodes}
    modules = dict(graph_module.named_modules())
    shared = _Shared()
    accumulators = []
    for i, site in enumerate(relu):
        if site.node not in nodes:
            raise RfprobeError(f"ReLU site {site.name}: node {site.node} not found when re-tracing the model")
        c = site.n_channels
        acc = _Accumulators(
            nonzero=torch.zeros(c, dtype=torch.float64, device=device),
            total=torch.zeros(c, dtype=torch.float64, device=device),
            maximum=torch.full((c,), -torch.inf, dtype=torch.float32, device=device),
            example_zero=torch.zeros(c, dtype=torch.int64, device=device),
            hist=torch.zeros(bins, dtype=torch.int64, device=device),
            k_sum=torch.zeros((), dtype=torch.int64, device=device))
        accumulators.append(acc)
        name = f"rfprobe_probe_{i}"
        node = nodes[site.node]
        probe = _Probe(acc, shared, bins, fused=compile, dim=site.dim)
        if site.kind not in ZERO_OUTPUT_KINDS:
            graph_module.add_submodule(f"{name}_in", _PreActivationProbe(probe))
            graph_module.add_submodule(f"{name}_out", _PostActivationProbe(probe))
            with graph_module.graph.inserting_before(node):
                graph_module.graph.call_module(f"{name}_in", (node.args[0],))
            with graph_module.graph.inserting_after(node):
                graph_module.graph.call_module(f"{name}_out", (node,))
        elif compile and site.kind == "relu" and site.dim == 1 and not _overwrites_shared_input(node, modules):
            graph_module.add_submodule(name, _ProbedRelu(probe))
            with graph_module.graph.inserting_after(node):
                fused = graph_module.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(fused)
            graph_module.graph.erase_node(node)
        else:
            graph_module.add_submodule(name, probe)
            with graph_module.graph.inserting_after(node):
                graph_module.graph.call_module(name, (node,))
    graph_module.recompile()
    return graph_module, accumulators, shared


def _affine(model: nn.Module, relu: list[ActivationSite], width: int) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta of the normalisation layer feeding each `bn`/`norm`-source site (the same channels),
    (layer, channel), NaN elsewhere."""
    modules = dict(model.named_modules())
    gamma = np.full((len(relu), width), np.nan)
    beta = np.full((len(relu), width), np.nan)
    for i, site in enumerate(relu):
        if site.source not in ("bn", "norm") or site.norm is None:
            continue
        g, b = affine_parameters(modules[site.norm])
        c = site.n_channels
        if (g is not None and g.numel() != c) or (b is not None and b.numel() != c):
            continue
        gamma[i, :c] = g.detach().double().cpu().numpy() if g is not None else 1.0
        beta[i, :c] = b.detach().double().cpu().numpy() if b is not None else 0.0
    return gamma, beta


_D = defaults(OPTIONS)
"""the defaults of `run` and `check_options`: the declared options' (the CLI's), so a notebook's call and the
command line compute the same numbers"""


def check_options(thresholds=THRESHOLDS, bins: int = _D["bins"]) -> tuple[float, ...]:
    """Refuse (one line) bad options before any work; returns the thresholds sorted and deduplicated."""
    if not 1 <= bins <= MAX_BINS:
        raise RfprobeError(f"--bins must be between 1 and {MAX_BINS}, got {bins}")
    thresholds = tuple(sorted({float(t) for t in (thresholds or THRESHOLDS)}))
    if not all(np.isfinite(t) and t > 0 for t in thresholds):
        raise RfprobeError(f"--threshold values must be finite and > 0, got {', '.join(map(str, thresholds))}")
    return thresholds


def run(model: nn.Module, data: Data, *, batch_size: int = 500, device: str | torch.device = "cpu",
        thresholds=THRESHOLDS, bins: int = _D["bins"], compile: bool = _D["compile"], checkpoint=None, command=None,
        progress: bool = False) -> xr.Dataset:
    """Activation sparsity of `model` over `data` (module docstring), joined with small-|gamma| counts.

    `model` must be on `device`; it is put in eval mode for the pass and restored afterwards; `data` is fed
    normalised with its `normalization` (recorded in the attrs). `compile`: each ReLU and its probe fused by
    torch.compile (`relu_statistics`; same counts and maxima, sums in another float32 order)."""
    thresholds = check_options(thresholds, bins)
    was_training = model.training
    model.eval()
    try:
        sites = find_sites(model)
        relu = sites.activations
        if not relu:
            raise RfprobeError(f"{getattr(model, 'rfprobe_arch', type(model).__name__)} has no activation sites to "
                               "probe (ReLU, ReLU6, LeakyReLU, GELU, SiLU, Hardswish, Mish)")
        probed, accumulators, shared = _instrument(model, relu, bins, device, compile)
        probed.eval()
        total_channels = sum(site.n_channels for site in relu)
        pooled_hist = torch.zeros(bins, dtype=torch.int64, device=device)
        pooled_k = torch.zeros((), dtype=torch.int64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        steps = (len(data) + batch_size - 1) // max(batch_size, 1)
        n = 0
        with torch.inference_mode():
            for x, y in track(batches(data, batch_size, device), steps, "sparsity", progress, unit=batch_size):
                n += int(y.shape[0])
                shared.batch_k = torch.zeros(x.shape[0], dtype=torch.int64, device=device)
                logits = _forward(probed, x, compile)
                correct += (logits.argmax(1) == y).sum()
                pooled_k += shared.batch_k.sum()
                index = torch.clamp_max(shared.batch_k * bins // total_channels, bins - 1)
                pooled_hist.index_add_(0, index, torch.ones_like(index))
    finally:
        model.train(was_training)
    return _dataset(model, relu, accumulators, pooled_hist, pooled_k, correct, n, bins, thresholds, total_channels,
                    checkpoint, data, device, command, compile)


def _forward(probed: fx.GraphModule, x: torch.Tensor, compile: bool) -> torch.Tensor:
    if not compile:
        return probed(x)
    quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on every CPU compile
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return probed(x)
    except Exception as e:  # torch.compile fails in many ways (no C++ compiler, no triton, ...)
        if "torch._dynamo" not in type(e).__module__ and "inductor" not in type(e).__module__:
            raise
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise RfprobeError(f"sparsity: --compile failed on this machine ({first}); run without --compile") from None
    finally:
        quiet.setLevel(level)


def _dataset(model, relu, accumulators, pooled_hist, pooled_k, correct, n, bins, thresholds, total_channels,
             checkpoint, data, device, command, compile) -> xr.Dataset:
    width = max(site.n_channels for site in relu)
    counts = [np.float64(n * acc.positions) for acc in accumulators]
    total = [acc.total.cpu().numpy() for acc in accumulators]
    nonzero = [np.where(np.isnan(t), np.nan, acc.nonzero.cpu().numpy()) for t, acc in zip(total, accumulators)]
    zeros = [c - nz for c, nz in zip(counts, nonzero)]
    dead = [np.where(np.isnan(nz), np.nan, nz == 0) for nz in nonzero]
    example_zero = [acc.example_zero.cpu().numpy().astype(np.float64) for acc in accumulators]
    channels = np.array([site.n_channels for site in relu], dtype=np.int64)
    gamma, beta = _affine(model, relu, width)
    is_bn = np.array([site.source in ("bn", "norm") for site in relu])
    dead_matrix = nan_padded(dead, width)
    small = np.abs(gamma)[None] < np.array(thresholds)[:, None, None]  # NaN compares False
    small_count = np.where(is_bn[None], small.sum(2), np.nan)
    dead_small = np.where(is_bn[None], (small & (dead_matrix[None] == 1)).sum(2), np.nan)
    dead_count = np.array([np.nansum(d) for d in dead])
    edges = np.linspace(0.0, 1.0, bins + 1)

    layer = ("layer",)
    lc = ("layer", "channel")
    ds = xr.Dataset(
        {
            "zero_fraction": (lc, nan_padded([z / c for z, c in zip(zeros, counts)], width)),
            "mean_activation": (lc, nan_padded([t / c for t, c in zip(total, counts)], width)),
            "max_activation": (lc, nan_padded([acc.maximum.cpu().double().numpy() for acc in accumulators], width)),
            "dead": (lc, dead_matrix),
            "example_zero_fraction": (lc, nan_padded([e / n for e in example_zero], width)),
            "gamma": (lc, gamma),
            "beta": (lc, beta),
            "positions": (layer, np.array([acc.positions for acc in accumulators], dtype=np.int64)),
            "layer_zero_fraction": (layer, np.array([z.sum() / (c * len(z)) for z, c in zip(zeros, counts)])),
            "layer_mean_activation": (layer, np.array([t.sum() / (c * len(t)) for t, c in zip(total, counts)])),
            "dead_count": (layer, dead_count.astype(np.int64)),
            "dead_fraction": (layer, dead_count / channels),
            "example_zero_channel_fraction_mean": (layer, np.array(
                [float(acc.k_sum) / (n * c) for acc, c in zip(accumulators, channels)])),
            "example_zero_channel_hist": (("layer", "bin"), np.stack([acc.hist.cpu().numpy() for acc in accumulators])),
            "small_gamma_count": (("threshold", "layer"), small_count),
            "dead_small_gamma_count": (("threshold", "layer"), dead_small),
            "pooled_zero_fraction": ((), sum(z.sum() for z in zeros) / sum(c * len(z) for z, c in zip(zeros, counts))),
            "pooled_dead_count": ((), int(dead_count.sum())),
            "pooled_dead_fraction": ((), dead_count.sum() / total_channels),
            "pooled_example_zero_channel_fraction_mean": ((), float(pooled_k) / (n * total_channels)),
            "pooled_example_zero_channel_hist": (("bin",), pooled_hist.cpu().numpy()),
            "bn_dead_count": ((), int(dead_count[is_bn].sum())),
            "pooled_small_gamma_count": (("threshold",), np.nansum(small_count, axis=1).astype(np.int64)),
            "pooled_dead_small_gamma_count": (("threshold",), np.nansum(dead_small, axis=1).astype(np.int64)),
            "accuracy": ((), float(correct) / n),
        },
        coords={**layer_coords(relu), "channel": np.arange(width), "threshold": np.array(thresholds),
                "bin_edges": ("bin_edge", edges)},
        attrs=provenance("sparsity", checkpoint, dataset=data.name, split=data.split, n_examples=n,
                         device=str(device), command=command, bins=bins, compiled_probes=int(compile),
                         **data.normalization_attrs(),
                         thresholds=", ".join(f"{t:g}" for t in thresholds), **DEFINITIONS),
    )
    return ds


def headline(ds: xr.Dataset) -> dict[str, dict]:
    """The numbers the CLI prints, per checkpoint label (JSON-able)."""
    out = {}
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        out[str(label)] = {
            "accuracy": float(one["accuracy"]),
            "zero_fraction": float(one["pooled_zero_fraction"]),
            "dead": int(one["pooled_dead_count"]),
            "channels": int(np.nansum(np.asarray(one["n_channels"].values, dtype=float))),
            "dead_fraction": float(one["pooled_dead_fraction"]),
            "bn_dead": int(one["bn_dead_count"]),
            "small_gamma": {f"{t:g}": int(v) for t, v in zip(one["threshold"].values, one["pooled_small_gamma_count"].values)},
            "dead_small_gamma": {f"{t:g}": int(v) for t, v in
                                 zip(one["threshold"].values, one["pooled_dead_small_gamma_count"].values)},
            "example_zero_channel_fraction": float(one["pooled_example_zero_channel_fraction_mean"]),
        }
    return out




def validate(options: dict, n_points: int | None = None) -> dict:
    return {**options, "threshold": check_options(options["threshold"], options["bins"])}


def run_checkpoint(checkpoint, data: Data, options: dict | None = None, *, batch_size: int = 500, device="cpu",
            command=None, progress: bool = False, **_) -> xr.Dataset:
    options = validate({**defaults(OPTIONS), **(options or {})})
    return run(checkpoint.model, data, batch_size=batch_size, device=device, thresholds=options["threshold"],
               bins=options["bins"], compile=options["compile"], checkpoint=checkpoint, command=command,
               progress=progress)


# ---------------------------------------------------------------- presentation and the registry entry


def tables(ds: xr.Dataset) -> list[Table]:
    """The CLI table: accuracy, zeros, dead channels and their join with small |gamma| (from `headline`)."""
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


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "pct" | "num")."""
    return {"accuracy": (row["accuracy"], "pct"), "ReLU outputs = 0": (row["zero_fraction"], "pct"),
            "dead channels": (row["dead_fraction"], "pct"),
            "entirely-0 channels / example": (row["example_zero_channel_fraction"], "pct")}


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.sparsity)."""
    from rfprobe.plots.sparsity import sparsity_figure

    return sparsity_figure(ds)
