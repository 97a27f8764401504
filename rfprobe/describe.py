"""What `rfprobe info` reports of a checkpoint, as plain data: its records, the normalisation data passes
use for it, parameter counts by group (and how many train in its mode), and its BN layers with their roles."""

from __future__ import annotations


def _normalization_report(ckpt) -> dict:
    """The normalisation data passes use for `ckpt` by default, and where it comes from (for `info`)."""
    from rfprobe.normalization import DATASET_DEFAULTS, resolve

    dataset = ckpt.dataset if ckpt.dataset.partition(":")[0] in DATASET_DEFAULTS else "cifar10"
    resolved = resolve(ckpt, dataset)
    source = {"checkpoint": "recorded in the checkpoint",
              "training dataset default": f"not recorded: the default of its training dataset {ckpt.dataset}, "
                                          "which the trainer used",
              "dataset default": f"not recorded: the measured dataset's default ({dataset} shown); "
                                 "override with --normalization or --mean/--std"}[resolved.source]
    return {**resolved.normalization.to_meta(), "source": source}


def describe(ckpt) -> dict:
    """The report of one loaded checkpoint (JSON-able): what `rfprobe info` prints and `--json` returns."""
    from rfprobe.graph import find_sites
    from rfprobe.trainable import GROUPS, MODES, parameter_groups, select

    model = ckpt.model
    sites = find_sites(model)
    groups = parameter_groups(model, sites)
    params = dict(model.named_parameters())
    totals = {g: sum(params[n].numel() for n in params if groups[n] == g) for g in GROUPS}
    trainable = None
    if ckpt.mode in MODES:
        also = tuple(ckpt.hparams.get("also") or ())
        plan = select(model, ckpt.mode, also=also, masks=ckpt.masks or None, sites=sites)
        trainable = {g: 0 for g in GROUPS}
        for name in plan.tensors:
            trainable[groups[name]] += int(plan.masks[name].sum()) if name in plan.masks else params[name].numel()
    return {
        "checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "arch": ckpt.arch, "num_classes": ckpt.num_classes,
        "format": "bare state dict" if ckpt.bare else ckpt.meta.get("format"), "mode": ckpt.mode,
        "dataset": ckpt.dataset, "epoch": ckpt.epoch, "metrics": ckpt.metrics,
        "normalization": _normalization_report(ckpt),
        "parameters": {"total": sum(totals.values()), **totals},
        "trainable": None if trainable is None else {"total": sum(trainable.values()), **trainable},
        "nonfinite_tensors": ckpt.nonfinite,
        "arch_kwargs": dict(getattr(model, "rfprobe_arch_kwargs", {}) or {}),
        "input_shape": list(getattr(model, "rfprobe_input_shape", ())),
        "norm_layers": [{"name": s.name, "kind": s.kind, "axis": s.axis, "depth": s.depth, "stage": s.stage,
                         "block": s.block, "channels": s.n_channels, "role": s.role, "running_stats": s.running_stats}
                        for s in sites.norm],
        "activations": [{"name": s.name, "kind": s.kind, "axis": s.axis, "channels": s.n_channels, "source": s.source}
                        for s in sites.activations],
    }
