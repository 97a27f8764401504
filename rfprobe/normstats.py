"""Which statistics a model's BatchNorms normalise with while a data pass measures it (`--norm-stats`):

- `running`: the running statistics training accumulated (eval mode; what a deployed model computes);
- `batch`: each batch's own mean and variance, nothing stored or updated (what Tent measures and adapts
  through; the numbers then depend on the batch size, which is recorded);
- `recalibrate[:N]`: first recompute every BN's running statistics from the first N batches of the measured
  data (AdaBN: statistics re-estimated on the target data; a cumulative average over the N batches, PyTorch's
  `momentum=None`), then measure in eval mode with them.

GroupNorm, LayerNorm, RMSNorm and InstanceNorm always use each example's own statistics, and frozen BN its
fixed ones: the choice changes only BatchNorm layers. A checkpoint whose BNs have no running statistics (a
Tent-style state dict, rfprobe.checkpoint) is measured in `batch` mode, with one line saying so.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from rfprobe.errors import RfprobeError

MODES = ("running", "batch", "recalibrate")
DEFAULT_RECALIBRATE_BATCHES = 10
DEFINITION = ("running: BatchNorm in eval mode with its running statistics; batch: every batch normalised with its "
              "own mean and (biased) variance, nothing updated; recalibrate:N: running statistics recomputed first as "
              "the cumulative average over the first N batches of the measured data (AdaBN), then eval mode; other "
              "normalisation kinds are unaffected")


def parse(spec: str | None) -> tuple[str, int | None]:
    """`running`, `batch`, `recalibrate` or `recalibrate:N` as (mode, N); one line on anything else."""
    spec = "running" if spec is None else str(spec).strip()
    mode, sep, count = spec.partition(":")
    if mode not in MODES or (sep and mode != "recalibrate"):
        raise RfprobeError(f"unknown --norm-stats {spec!r}; choose running, batch or recalibrate[:N]")
    if mode != "recalibrate":
        return mode, None
    try:
        n = int(count) if sep else DEFAULT_RECALIBRATE_BATCHES
    except ValueError:
        raise RfprobeError(f"--norm-stats {spec!r}: N in recalibrate:N must be a whole number of batches") from None
    if n < 1:
        raise RfprobeError(f"--norm-stats {spec!r}: N in recalibrate:N must be at least 1")
    return mode, n


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def use_batch_statistics(model: nn.Module, names=None) -> list[str]:
    """The BatchNorms `names` of `model` (default: all) normalise with each batch's own statistics from now
    on, in eval mode too (their running statistics dropped); returns the names changed."""
    changed = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and (names is None or name in names) and (
                m.running_mean is not None or m.track_running_stats):
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
            m.track_running_stats = False
            changed.append(name)
    return changed


def recalibrate(model: nn.Module, batches_iter, n_batches: int) -> int:
    """Recompute every BatchNorm's running statistics as the cumulative average over the first `n_batches`
    batches of `batches_iter` (only the BNs in train mode, everything else as it was); returns the batches used."""
    bns = batch_norms(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    momenta = []
    for m in bns:
        if m.running_mean is None:
            m.register_buffer("running_mean", torch.zeros(m.num_features, device=device))
            m.register_buffer("running_var", torch.ones(m.num_features, device=device))
            m.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))
            m.track_running_stats = True
        m.reset_running_stats()
        momenta.append(m.momentum)
        m.momentum = None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in bns:
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for x, _ in batches_iter:
                if used >= n_batches:
                    break
                model(x)
                used += 1
    finally:
        for m, training in modes:
            m.training = training
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
    return used


def apply(model: nn.Module, spec: str | None, data, batch_size: int | None, *, stats_missing: bool = False,
          note=None) -> dict:
    """Put `model`'s BatchNorms in the `spec` mode for measuring `data` (normalised; batches of `batch_size`)
    and return what a result records: `norm_stats` (the mode used), `norm_stats_batch_size`, and for
    recalibrate the batches used. `stats_missing`: the checkpoint has no running statistics, so `running`
    becomes `batch` (with one `note` line)."""
    from rfprobe.data import batches

    mode, n = parse(spec)
    if mode == "running" and stats_missing:
        if note is not None and not getattr(model, "rfprobe_noted_batch_stats", False):  # once per loaded model
            note("the checkpoint's BatchNorms have no running statistics (a Tent-style state dict): measured with "
                 "each batch's own statistics (--norm-stats batch)")
            model.rfprobe_noted_batch_stats = True
        mode = "batch"
    attrs = {"norm_stats": mode if mode != "recalibrate" else f"recalibrate:{n}", "norm_stats_definition": DEFINITION,
             "norm_stats_batch_size": int(batch_size) if batch_size is not None else -1}
    if not batch_norms(model):
        return attrs
    if mode == "batch":
        use_batch_statistics(model)
    elif mode == "recalibrate":
        key = (attrs["norm_stats"], data.name, data.split, len(data), batch_size, data.normalization.describe())
        if getattr(model, "rfprobe_recalibrated", None) != key:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            used = recalibrate(model, batches(data, batch_size or 500, device), n)
            model.rfprobe_recalibrated = key
            model.rfprobe_recalibrated_batches = used
        attrs["norm_stats_batches_used"] = int(model.rfprobe_recalibrated_batches)
    return attrs
