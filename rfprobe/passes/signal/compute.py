"""Signal propagation plots (SPPs; Brock, De, Smith 2021; docs/science.md section 3).

One batch `x` goes through the model once. At the stem output (block 0: the input of the first residual
block) and at the output of every residual addition of the traced graph (block b = 1, 2, ...: ResNets,
NF-ResNets, ConvNeXts, ViTs alike; an addition whose two inputs have as many conv/linear layers since they
forked has no residual branch to tell apart and is left out, named in `skipped_additions`), with per-channel statistics over examples and positions (n, h, w; for
token tensors (n, tokens, features) and channels-last tensors the channels are the features of the last
dimension, `rfprobe.graph.AddSite.dim`):

- `squared_mean`       = mean_c( mean_{n,h,w}(x)^2 )           average channel squared mean
- `variance`           = mean_c( var_{n,h,w}(x) )              average channel variance (biased, 1/(NHW))
- `residual_variance`  = the same variance of the residual branch, taken before any scalar factor
  between it and the addition (an NF block's `alpha * skip_gain`); NaN at block 0
- `expected_variance`  = for NF-ResNets, the analytic Var(h_b) their betas are built from
  (1 at the stem, + alpha^2 per block, 1 + alpha^2 after a transition; it assumes skip gain 1); NaN otherwise

The additions and their residual/shortcut inputs come from `rfprobe.graph.find_sites` (the shortcut is
the input with fewer conv/linear layers). The values are read by running the model's fx trace with an
`fx.Interpreter` that reduces each watched node's output as soon as it is computed, so no hook is ever
placed on the model (an OpenLTH block's `out + shortcut` is no module a hook could see).

BatchNorm: with `batch_stats` every BN layer normalises with the batch's own statistics (train-mode BN
with `track_running_stats` off, so running statistics and `num_batches_tracked` are never touched);
otherwise it uses its running statistics (eval mode). Everything else is in eval mode (no dropout). The
model's modes are restored afterwards, also when the pass raises.
"""

from __future__ import annotations


import contextlib
import operator
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import xarray as xr
from rich.table import Table

from rfprobe.data import Data, load_dataset, normalize
from rfprobe.errors import RfprobeError
from rfprobe.options import defaults
from rfprobe.report_tables import cell, checkpoint_table
from rfprobe.results import provenance
from rfprobe.graph import BN_TYPES, AddSite, Sites, enclosing_module, find_sites
from rfprobe.passes.signal import OPTIONS



INPUTS = ("gaussian", "data")
DEFINITIONS = {
    "signal_sites": "block 0: the stem output (the input of the first residual block); block b >= 1: the output "
                    "of the b-th residual addition (before any ReLU that follows it)",
    "squared_mean_definition": "mean over channels of (mean over examples and positions of x)^2",
    "variance_definition": "mean over channels of the biased variance (1/(N*H*W)) over examples and positions",
    "residual_variance_definition": "variance (as above) of the residual branch before the scalar factors between "
                                    "it and the addition (alpha * skip_gain in an NF block); the shortcut is the "
                                    "addition's input with fewer conv/linear layers",
    "expected_variance_definition": "NF-ResNets: the analytic Var(h) the betas are built from: 1 at the stem, "
                                    "Var + alpha^2 per block, 1 + alpha^2 after a transition block (assumes skip "
                                    "gain 1); NaN for other models",
}
_SCALE_FUNCTIONS = {operator.mul: True, torch.mul: True, operator.truediv: False, torch.div: False}


def channel_statistics(x: torch.Tensor, dim: int = 1) -> tuple[float, float]:
    """(mean_c(m_c^2), mean_c(v_c)) for per-channel mean m_c and biased variance v_c over every dim but `dim`.

    Two passes with float64 accumulation (no float64 copy of `x`): m_c = sum(x_c) / n, then
    v_c = sum((x_c - m'_c)^2) / n - (m_c - m'_c)^2 with m'_c = m_c rounded to x's dtype (the centred sum
    avoids the cancellation of E[x^2] - m^2 when the mean is large)."""
    if x.ndim < 2:
        raise RfprobeError(f"signal statistics need (N, C, ...) tensors, got shape {tuple(x.shape)}")
    x = x.detach()
    if dim != 1:
        x = x.movedim(dim, 1)
    x = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, positions)
    n = x.shape[0] * x.shape[2]

    def channel_sum(t):  # one contiguous reduction, then the batch: much faster than sum(dim=(0, 2))
        return t.sum(dim=2, dtype=torch.float64).sum(dim=0)

    mean = channel_sum(x) / n
    rounded = mean.to(x.dtype)
    var = channel_sum((x - rounded.view(1, -1, 1)).square()) / n - (mean - rounded.to(torch.float64)) ** 2
    return float((mean ** 2).mean()), float(var.mean())


@contextlib.contextmanager
def signal_mode(model: nn.Module, batch_stats: bool):
    """Eval mode everywhere; with `batch_stats`, BN layers normalise with batch statistics without updating
    their running statistics. Every module's `training` (and BN's `track_running_stats`) is restored on exit."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        model.eval()
        if batch_stats:
            for m in model.modules():
                if isinstance(m, BN_TYPES):
                    m.train()
                    m.track_running_stats = False
        yield model
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_scalar(arg) -> bool:
    if isinstance(arg, (int, float)):
        return True
    shape = _shape(arg)
    return shape is not None and int(np.prod(shape, dtype=np.int64)) == 1


def _branch_node(node: fx.Node, shape: tuple[int, ...]) -> fx.Node:
    """Step back from an addition's residual input through multiplications/divisions by scalars."""
    while node.op == "call_function" and node.target in _SCALE_FUNCTIONS and len(node.args) == 2:
        a, b = node.args
        if isinstance(a, fx.Node) and _shape(a) == shape and _is_scalar(b):
            node = a
        elif _SCALE_FUNCTIONS[node.target] and isinstance(b, fx.Node) and _shape(b) == shape and _is_scalar(a):
            node = b
        else:
            break
    return node


def _stem_node(first: AddSite, nodes: dict[str, fx.Node]) -> fx.Node:
    """The input of the first residual block: the first addition's fork, stepped back out of its block
    (a transition block forks after its own pre-activation)."""
    node = nodes[first.fork]
    block = first.name[:-len(".add")] if first.name.endswith(".add") else None
    while block and (enclosing_module(node) == block or enclosing_module(node).startswith(block + ".")):
        inputs = [a for a in node.args if isinstance(a, fx.Node) and len(_shape(a) or ()) >= 2]  # tensors only
        if not inputs:
            break
        node = inputs[0]
    return node


class _Recorder(fx.Interpreter):
    """Runs a GraphModule, reducing the watched nodes' outputs with `channel_statistics` as they appear."""

    def __init__(self, graph: fx.GraphModule, watched: dict[str, int]):
        super().__init__(graph)
        self.watched = watched
        """node name -> the dimension of its channels"""
        self.stats: dict[str, tuple[float, float]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.watched:
            self.stats[n.name] = channel_statistics(out, self.watched[n.name])
        return out


def measure(model: nn.Module, x: torch.Tensor, *, batch_stats: bool, sites: Sites | None = None) -> xr.Dataset:
    """The SPP statistics (module docstring) of `model` on the batch `x`, on a `block` dimension.

    Variables: squared_mean, variance, residual_variance, expected_variance (float64); site (the stem or the
    addition's name), stage, transition (1 where the shortcut is not the identity: a projection, or any op
    between the fork and the addition), n_channels."""
    if sites is None:
        with signal_mode(model, batch_stats):  # traced in the BN mode it measures (fused norm+act modules inline it)
            sites = find_sites(model)
    arch = getattr(model, "rfprobe_arch", type(model).__name__)
    if not sites.additions:
        raise RfprobeError(f"{arch} has no residual additions; signal propagation plots need a residual network")
    adds = [a for a in sites.additions if a.residual is not None and a.fork is not None]
    skipped = [a.name for a in sites.additions if a not in adds]
    if not adds:
        raise RfprobeError(f"{arch}: cannot tell the residual branch from the shortcut at any of its "
                           f"{len(skipped)} additions (both inputs have as many conv/linear layers), e.g. {skipped[0]}")
    nodes = {n.name: n for n in sites.graph.graph.nodes}
    stem = _stem_node(adds[0], nodes)
    branch = [_branch_node(nodes[a.residual], _shape(nodes[a.node])) for a in adds]
    stem_shape, add_shape = _shape(stem) or (), _shape(nodes[adds[0].node]) or ()
    stem_dim = adds[0].dim if len(stem_shape) == len(add_shape) else (2 if len(stem_shape) == 3 else 1)
    recorder = _Recorder(sites.graph, {stem.name: stem_dim, **{a.node: a.dim for a in adds},
                                       **{b.name: a.dim for a, b in zip(adds, branch)}})
    with signal_mode(model, batch_stats), torch.inference_mode():
        recorder.run(x)
    stats = recorder.stats
    n = len(adds) + 1
    expected = getattr(model, "expected_variance", None)
    expected = np.asarray(expected, dtype=np.float64) if expected is not None and len(expected) == n else np.full(n, np.nan)
    shortcut_layers = [nodes[a.shortcut] is not nodes[a.fork] for a in adds]
    return xr.Dataset(
        {
            "squared_mean": ("block", np.array([stats[stem.name][0]] + [stats[a.node][0] for a in adds])),
            "variance": ("block", np.array([stats[stem.name][1]] + [stats[a.node][1] for a in adds])),
            "residual_variance": ("block", np.array([np.nan] + [stats[b.name][1] for b in branch])),
            "expected_variance": ("block", expected),
            "site": ("block", np.array(["stem"] + [a.name for a in adds], dtype=object)),
            "stage": ("block", np.array([adds[0].stage] + [a.stage for a in adds], dtype=np.int64)),
            "transition": ("block", np.array([0] + [int(t) for t in shortcut_layers], dtype=np.int64)),
            "n_channels": ("block", np.array([stem_shape[stem_dim] if len(stem_shape) > stem_dim else 0]
                                             + [a.n_channels for a in adds],
                                             dtype=np.int64)),
        },
        coords={"block": np.arange(n, dtype=np.int64)},
        attrs={"skipped_additions": ", ".join(skipped)},
    )


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) for m in model.modules())


def check_options(input_kind: str = "gaussian", batch: int = 256) -> None:
    """Refuse (one line) bad options before any work."""
    if input_kind not in INPUTS:
        raise RfprobeError(f"unknown --input {input_kind!r}; choose gaussian or data")
    if batch < 2:
        raise RfprobeError(f"--batch must be at least 2 (statistics over a batch), got {batch}")


def gaussian_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    """`batch` examples of unit Gaussian noise of one example's `shape`, drawn on the CPU from `seed`."""
    check_options("gaussian", batch)
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def data_input(dataset: str, batch: int, seed: int, *, split: str = "test", root: str | Path | None = None,
               download: bool = False) -> Data:
    """`batch` examples drawn at random (the first `batch` of a `seed`-seeded permutation) from one split of
    `dataset`, as a Data: `run` normalises it with its `normalization` (set a checkpoint's own with
    `Data.with_normalization`)."""
    check_options("data", batch)
    data = load_dataset(dataset, split, root=root, download=download, seed=seed)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:batch]
    return data.select(index).materialized()


def run(model: nn.Module, x: torch.Tensor | Data, *, batch_stats: bool, checkpoint=None, input_kind: str = "gaussian",
        dataset: str | None = None, split: str | None = None, seed: int | None = None, command=None,
        **definitions) -> xr.Dataset:
    """`measure` with provenance attrs: the SPP of one model (a checkpoint, or a fresh init when `checkpoint`
    is None) on the batch `x`: a tensor on the model's device, or a Data (`data_input`), which is normalised
    with its `normalization` (recorded) and moved to the model's device. `bn_statistics` records batch/running/
    none (no BN layers)."""
    check_options(input_kind, 2)
    extra = {}
    if isinstance(x, Data):
        x = x.materialized()
        input_kind, dataset, split, extra = "data", x.name, x.split, x.normalization_attrs()
        device = next(model.parameters(), torch.empty(0)).device
        x = normalize(x.x.to(device), x.mean, x.std)
    shape = getattr(model, "rfprobe_input_shape", None)
    if shape is not None and tuple(x.shape[1:2]) != tuple(shape[:1]):
        raise RfprobeError(f"the input has {x.shape[1]} channels but {getattr(model, 'rfprobe_arch', 'the model')} "
                           f"takes {shape[0]}")
    ds = measure(model, x, batch_stats=batch_stats)
    bn = "none" if not has_batchnorm(model) else "batch" if batch_stats else "running"
    ds["bn_statistics"] = ((), np.array(bn, dtype=object))
    attrs = provenance("signal", checkpoint, dataset=dataset if input_kind == "data" else "gaussian",
                       split=split if input_kind == "data" else None, n_examples=int(x.shape[0]),
                       device=str(x.device), command=command, input=input_kind,
                       input_seed=-1 if seed is None else int(seed), **extra, **DEFINITIONS, **definitions)
    if checkpoint is None:
        attrs.update(arch=getattr(model, "rfprobe_arch", type(model).__name__), mode="init", epoch=0)
    ds.attrs = {**attrs, "skipped_additions": ds.attrs.get("skipped_additions", ""),
                "skipped_additions_definition": "additions left out: both inputs have as many conv/linear layers since "
                                                "they forked (no residual branch to tell from the shortcut: e.g. "
                                                "rotary embeddings and weight-free token mixers)"}
    return ds


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _finite(values: np.ndarray, reduce) -> float | None:
    """`reduce` over the finite values (None when there are none: NaN from a non-finite checkpoint)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(reduce(values)) if values.size else None


def headline(ds: xr.Dataset) -> dict[str, dict]:
    """Per checkpoint: blocks measured (stem excluded), BN statistics, the variance at the stem, at the last
    block and its maximum, the largest squared mean, the mean residual variance, the last expected variance
    (None where undefined), and the full curves."""
    out = {}
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        valid = one["site"].values != ""
        var, sq, res, exp = (one[v].values[valid] for v in ("variance", "squared_mean", "residual_variance", "expected_variance"))
        out[str(label)] = {
            "blocks": int(valid.sum()) - 1,
            "bn_statistics": str(one["bn_statistics"].values),
            "variance_stem": _finite_or_none(var[0]),
            "variance_last": _finite_or_none(var[-1]),
            "variance_max": _finite(var, np.max),
            "squared_mean_max": _finite(sq, np.max),
            "residual_variance_mean": _finite(res[1:], np.mean),
            "expected_variance_last": _finite_or_none(exp[-1]),
            "curves": {v: [_finite_or_none(x) for x in arr] for v, arr in
                       (("squared_mean", sq), ("variance", var), ("residual_variance", res), ("expected_variance", exp))},
        }
    return out




def validate(options: dict, n_points: int | None = None) -> dict:
    """`options` (OPTIONS' names) checked (one line on a bad value)."""
    from rfprobe.models import check_bn_init

    check_options(options["input_kind"], options["batch"])
    check_bn_init(options["bn_init"])
    return dict(options)


def running_stats_untouched(model: nn.Module) -> bool:
    """True when the model has BN layers and every one still holds its initial running statistics (mean 0,
    var 1, no batches tracked): a network at initialisation, whatever file it came from."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats
           and m.running_mean is not None]
    return bool(bns) and all(
        not bool(m.running_mean.any()) and bool((m.running_var == 1).all())
        and (m.num_batches_tracked is None or int(m.num_batches_tracked) == 0) for m in bns)


def at_init(checkpoint) -> bool:
    """A checkpoint of a network at initialisation: its recorded (or given) epoch is 0, or it records no
    epoch (a bare init file) and its BN running statistics were never updated (`running_stats_untouched`)."""
    return checkpoint.epoch == 0 or checkpoint.epoch is None and running_stats_untouched(checkpoint.model)


def uses_batch_stats(checkpoint, batch_stats: bool | None) -> bool:
    """Whether BN normalises with the batch's statistics: as `batch_stats` says when given (--batch-stats /
    --running-stats), else at initialisation (`at_init`: running statistics of an untrained net are its
    init values, mean 0 and var 1, not statistics of anything; docs/science.md)."""
    return bool(batch_stats) if batch_stats is not None else checkpoint is None or at_init(checkpoint)


def run_checkpoint(checkpoint, data: Data | None = None, options: dict | None = None, *, device="cpu", command=None,
            **_) -> xr.Dataset:
    """`run` on one checkpoint: with `input_kind` data, `data` is the batch (`data_input`, normalised for this
    checkpoint); else a Gaussian batch from `seed`. BN statistics as `uses_batch_stats` says."""
    o = validate({**defaults(OPTIONS), **(options or {})})
    model = checkpoint.model
    if o["input_kind"] == "data":
        if data is None:
            raise RfprobeError("signal --input data needs the data batch (signal.data_input)")
        x = data
    else:
        x = gaussian_input(model.rfprobe_input_shape, o["batch"], o["seed"]).to(device)
    return run(model, x, batch_stats=uses_batch_stats(checkpoint, o["batch_stats"]), checkpoint=checkpoint,
               input_kind=o["input_kind"], split=data.split if data is not None else "test", seed=o["seed"],
               command=command)


# ---------------------------------------------------------------- the command: checkpoints and fresh inits


def fresh_options(arg: str, given: dict) -> dict | None:
    """The build options of `given` that the architecture `arg` takes; None when `arg` is an existing file
    (a checkpoint); a one-line error when it is neither a file nor an architecture name."""
    from rfprobe.models import architecture_options, architecture_patterns

    if Path(arg).exists():
        return None
    try:
        taken = architecture_options(arg)
    except RfprobeError:
        raise RfprobeError(f"{arg}: neither an existing checkpoint file nor an architecture name "
                           f"({'; '.join(architecture_patterns())})") from None
    taken = taken or ()  # a constructor outside rfprobe: its keyword arguments come from --arch-kwargs
    init_defaults = {"bn_init": "uniform"} if "bn_init" in taken else {}
    return {**init_defaults, **{k: v for k, v in given.items() if k in taken}}


def prepare_models(args: list[str], options: dict, data_options):
    """`rfprobe signal ARG...`: each argument an existing checkpoint file or an architecture name (a fresh
    init from `seed`, with `--bn-init` / `--skip-init-gain` where it takes them). Checks everything before
    anything is loaded; returns (default labels, measure(arch, num_classes, device, command) -> Datasets)."""
    from rfprobe.checkpoint import label_of
    from rfprobe.loading import load_one
    from rfprobe.models import build_model

    input_kind, batch, seed = options["input_kind"], options["batch"], options["seed"]
    given = {k: options[k] for k in ("bn_init", "skip_init_gain") if options[k] is not None}
    if input_kind != "data" and data_options.override is not None:
        raise RfprobeError("--normalization / --mean / --std apply to --input data (Gaussian input is not normalised)")
    builds = [fresh_options(a, given) for a in args]
    for name in given:
        if not any(b is not None and name in b for b in builds):
            raise RfprobeError(f"--{name.replace('_', '-')} sets an option of fresh inits; no architecture argument "
                               f"takes it (--bn-init: OpenLTH-style BN models; --skip-init-gain: nf_* models)")
    labels = [label_of(a) if Path(a).exists() else a for a in args]

    def measure(arch, num_classes, device, command, arch_kwargs=None, input_shape=None):
        batch_data = (data_input(data_options.dataset, batch, seed, split=data_options.split, root=data_options.root,
                                 download=data_options.download) if input_kind == "data" else None)
        results = []
        for arg, build in zip(args, builds):
            if build is None:
                ckpt = load_one(Path(arg), arch, num_classes, device=device, arch_kwargs=arch_kwargs,
                                input_shape=input_shape)
                model = ckpt.model
            else:
                ckpt, model = None, build_model(arg, num_classes or 10, seed=seed, input_shape=input_shape,
                                                **{**(arch_kwargs or {}), **build}).to(device)
            if batch_data is not None:
                x = data_options.for_checkpoint(ckpt, batch_data, batch, model=model)
            else:
                x = gaussian_input(model.rfprobe_input_shape, batch, seed).to(device)
            init = {} if ckpt is not None else {"init_seed": seed, "bn_init": build.get("bn_init", ""),
                                                "skip_init_gain": build.get("skip_init_gain", "")}
            results.append(run(model, x, batch_stats=uses_batch_stats(ckpt, options["batch_stats"]), checkpoint=ckpt,
                               input_kind=input_kind, split=data_options.split, seed=seed, command=command, **init))
        return results

    return labels, measure


# ---------------------------------------------------------------- presentation and the registry entry


SIGNAL_ROWS = (("residual blocks", "blocks"), ("BN statistics", "bn_statistics"), ("variance: stem", "variance_stem"),
               ("variance: last block", "variance_last"), ("variance: max", "variance_max"),
               ("squared mean: max", "squared_mean_max"), ("residual variance: mean", "residual_variance_mean"),
               ("expected variance: last", "expected_variance_last"))


def tables(ds: xr.Dataset) -> list[Table]:
    """The CLI table: the headline numbers of the signal propagation per checkpoint."""
    title = f"signal propagation (block 0 = stem), {ds.attrs['input']} input, batch {ds.attrs['n_examples']}"
    return [checkpoint_table(title, headline(ds), [(name, lambda s, k=key: cell(s[k])) for name, key in SIGNAL_ROWS])]


def key_numbers(row: dict) -> dict[str, tuple[float | None, str]]:
    """One checkpoint's headline row as the study table's name -> (value, "num")."""
    return {name: (row[key], "num") for name, key in SIGNAL_ROWS if key not in ("blocks", "bn_statistics")}


def figure(ds: xr.Dataset):
    """The pass's figure, from the Dataset alone (rfprobe.plots.signal)."""
    from rfprobe.plots.signal import signal_figure

    return signal_figure(ds)
