"""What decides a study's stores: `Request` (passes, options, data options) and its per-store fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rfprobe.errors import RfprobeError
from rfprobe.loading import DataOptions
from rfprobe.passes import REGISTRY
from rfprobe.study.inputs import Entry


@dataclass
class Request:
    """Everything that decides a study's stores: which passes, each pass's own options (`Pass.options` names),
    the data options (rfprobe.loading.DataOptions; dataset None = each checkpoint's own, limit per pass in
    `limits`), and per data pass its limit and batch size."""

    passes: tuple[str, ...]
    options: dict[str, dict]
    data: DataOptions = field(default_factory=DataOptions)
    limits: dict[str, int | None] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    device: str = "auto"
    arch: str | None = None
    num_classes: int | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    command: list[str] = field(default_factory=list)
    latest_only: tuple[str, ...] = ()
    """passes run only on each run's latest checkpoint (`Entry.latest`): a costly pass beside a trajectory"""

    def passes_for(self, entry: Entry) -> tuple[str, ...]:
        """The passes this request runs on `entry`: all of them on a run's latest checkpoint, else those not
        in `latest_only`."""
        return tuple(p for p in self.passes if entry.latest or p not in self.latest_only)

    def build(self, entry: Entry | None = None) -> dict:
        """How a checkpoint's model is built (`load_one`'s arch_kwargs / input_shape): the entry's `[[input]]`
        table first, then the command's options."""
        entry_build = entry.build if entry is not None else {}
        return {"arch_kwargs": entry_build.get("arch_kwargs") or self.arch_kwargs,
                "input_shape": entry_build.get("input_shape") or self.input_shape}

    def reads_data(self, pass_name: str) -> bool:
        """Whether the pass with this request's options measures data (`Pass.needs_data`)."""
        return REGISTRY[pass_name].needs_data(self.options[pass_name])

    def fingerprint(self, pass_name: str, device_kind: str, entry: Entry | None = None) -> str:
        """The JSON of what decides one pass's numbers on one checkpoint (its file is checked by sha256 beside
        it): the pass, its version and options, the rfprobe version, how a bare file is loaded (arch, classes), what an
        `[[input]]` table says of it (an epoch 0 changes signal's BN statistics, a mode every provenance);
        for a data pass the data's identity (dataset, split, the data folder, limit), its normalisation, batch
        size and device kind. Not the command line."""
        from rfprobe import __version__

        entry = entry or Entry(Path(""), "", "")
        neutral = {o.name for o in REGISTRY[pass_name].options if not o.decides_result}
        decided = {"pass": pass_name, "pass_version": REGISTRY[pass_name].version,
                   "options": {k: v for k, v in self.options[pass_name].items() if k not in neutral},
                   "rfprobe_version": __version__,
                   "arch": entry.arch or self.arch, "num_classes": entry.num_classes or self.num_classes,
                   "given": entry.given, **{k: v for k, v in self.build(entry).items() if v is not None}}
        if self.reads_data(pass_name):
            normalization = entry.given.get("normalization")
            data = self.data
            decided.update(dataset=entry.given.get("dataset") or data.dataset, split=data.split, norm_stats=data.norm_stats,
                           data_root=data.resolved_root(), normalization=normalization or data.normalization,
                           mean=None if normalization else data.mean, std=None if normalization else data.std,
                           limit=self.limits.get(pass_name), batch_size=self.batch_sizes.get(pass_name),
                           device=device_kind, **{k: v for k, v in (("image_size", data.image_size),
                                                                     ("resize", data.resize)) if v is not None})
        return json.dumps(decided, sort_keys=True, default=str)


def validate(request: Request) -> None:
    """Every option of the request checked (one line on a bad value) before anything is loaded."""
    from rfprobe.loading import check_positive
    from rfprobe.data import resolve_device

    unknown = [p for p in request.passes if p not in REGISTRY]
    if unknown or not request.passes:
        raise RfprobeError(f"--passes: unknown pass(es) {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(REGISTRY)}")
    stray = [p for p in request.latest_only if p not in request.passes]
    if stray:
        raise RfprobeError(f"--latest-only: {', '.join(stray)} not among --passes ({', '.join(request.passes)})")
    for name in request.passes:
        p = REGISTRY[name]
        p.validate({**p.defaults(), **request.options[name]}, n_points=request.limits.get(name))
        check_positive(**{f"{name}_batch_size": request.batch_sizes.get(name), f"{name}_limit": request.limits.get(name)})
    resolve_device(request.device)
