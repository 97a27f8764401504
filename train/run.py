"""`train(config)`: build, (re)load, train epoch by epoch, evaluate, checkpoint. The whole run in one place."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.data import Data, load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.imagefolder import DEFAULT_CROP, default_transform
from rfprobe.models import architecture_options, build_model
from rfprobe.normalization import Normalization
from rfprobe.trainable import Trainable, apply, select
from train import distributed, rundir
from train.config import Config, to_toml
from train.loop import evaluate, train_epoch
from train.optim import MaskedSGD

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "test_top5")


def data_seed(seed: int) -> int:
    """Seed of the generator behind shuffling and augmentation (a stream apart from the model's init)."""
    return seed * 1_000_003 + 7


def mask_seed(seed: int) -> int:
    """Seed of the generator that draws the `random` mode's masks."""
    return seed * 1_000_003 + 11


def train(config: Config) -> Path:
    """Run (or resume) the training `config` describes; returns the run directory."""
    config.validate()
    ctx = distributed.setup(config.device)
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        return _train(config, ctx)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown()


def _say(ctx: distributed.Context, message: str) -> None:
    if ctx.main:
        print(message, flush=True)


def _load_data(config: Config, ctx: distributed.Context):
    def load():
        train = load_dataset(config.dataset, "train", root=config.data_root, download=config.download, limit=config.limit,
                             strict=config.strict, workers=config.workers)
        test = load_dataset(config.dataset, "test", root=config.data_root, download=config.download,
                            limit=config.test_limit, strict=config.strict, workers=config.workers)
        if train.streamed and train.source == test.source:
            raise RfprobeError(f"--data-root {config.data_root}: training needs DIR/train and DIR/val (or test), each "
                               "with one sub-folder of images per class; found class folders at the top only")
        if train.classes != test.classes:
            raise RfprobeError(f"--data-root {config.data_root}: the train and test splits have different class folders")
        return train, test

    if config.download and ctx.world > 1:  # one rank downloads, the others read what it wrote
        loaded = load() if ctx.main else None
        distributed.barrier(ctx)
        return loaded or load()
    return load()


@dataclass
class Run:
    """Everything a run needs once built: data, model (and what runs it), trainable plan, optimiser, the data
    generator, the metrics history so far and the epoch to start from."""

    out: Path
    device: torch.device
    amp: bool
    channels_last: bool
    normalization: Normalization
    train_data: Data
    test_data: Data
    num_classes: int
    model: torch.nn.Module
    runner: torch.nn.Module
    trainable: Trainable
    optimizer: MaskedSGD
    generator: torch.Generator
    history: list[dict]
    start: int
    resumed: bool


def _train(config: Config, ctx: distributed.Context) -> Path:
    out = config.output_dir()
    source, ckpt = _resume_point(config, ctx, out)
    if source is not None and source.name == "final.pt":
        _say(ctx, f"{out}: already complete ({ckpt.epoch} epochs); nothing to do")
        return out
    run = _build(config, ctx, out, source, ckpt)
    _loop(config, ctx, run)
    return out


def _resume_point(config: Config, ctx: distributed.Context, out: Path):
    """(file, checkpoint) to continue from with --resume (None, None for a new run); refuses a run directory
    that cannot be used and a recorded run whose training settings differ from `config`."""
    rundir.check(out, resume=config.resume, overwrite=config.overwrite)
    source = rundir.resume_point(out) if config.resume and out.exists() else None
    if source is None:
        return None, None
    from rfprobe.models.external import is_user_code

    ckpt = load_checkpoint(source, arch=config.arch if is_user_code(config.arch) else None)  # named by the user
    diffs = config.differences(ckpt.hparams)
    if diffs:
        raise RfprobeError(f"--resume {out}: settings differ from the recorded run: {'; '.join(diffs)}")
    recorded = ckpt.hparams.get("device_type")
    if source.name == "last.pt" and recorded and recorded != ctx.device.type:
        raise RfprobeError(f"--resume {out}: the run was trained on {recorded}; resume it on {recorded} "
                           f"(the data generator's state is device-specific)")
    return source, ckpt


CPU_CHANNELS_LAST_MIN_WIDTH = 8
"""narrower convs train NCHW on the CPU: torch 2.14.1's oneDNN channels_last backward aborts with heap corruption
("free(): invalid next size") for 4- and 6-channel convs on an AMD EPYC (8 and more ran clean)"""


def narrowest_conv(model: nn.Module) -> int:
    """The fewest output channels of any conv layer of `model` (a large number when it has none)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return min(widths, default=1 << 30)


def _build(config: Config, ctx: distributed.Context, out: Path, source: Path | None, ckpt) -> Run:
    """Data, model, trainable plan and optimiser, restored from `ckpt` when resuming."""
    device = ctx.device
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cuda = device.type == "cuda"
    channels_last, amp = config.channels_last, config.amp and cuda
    normalization = config.input_normalization()
    train_data, test_data = (d.with_normalization(normalization) for d in _load_data(config, ctx))
    num_classes = len(train_data.classes)
    outside = architecture_options(config.arch) is None  # torchvision, timm, user code: any input size they take
    example_shape = tuple(train_data.x.shape[1:])
    if train_data.streamed and outside:
        example_shape = (3, config.image_size or DEFAULT_CROP, config.image_size or DEFAULT_CROP)
    model = build_model(config.arch, num_classes, seed=config.seed,
                        input_shape=config.input_shape or (example_shape if outside else None), **config.model_options())
    if train_data.streamed:
        crop = config.image_size or int(model.rfprobe_input_shape[-1])
        transform = default_transform(crop, source="trainer")
        train_data, test_data = (replace(d, x=d.x.with_transform(transform)) for d in (train_data, test_data))
    if tuple(model.rfprobe_input_shape) != tuple(train_data.x.shape[1:]):
        raise RfprobeError(f"{config.arch} takes inputs of shape {tuple(model.rfprobe_input_shape)}, but {config.dataset} "
                           f"examples have shape {tuple(train_data.x.shape[1:])}")
    trainable = select(model, config.mode, also=config.also, k=config.random_k,
                       generator=torch.Generator().manual_seed(mask_seed(config.seed)),
                       masks=(ckpt.masks or None) if ckpt else None)
    if config.mode != "none" and len(train_data) < config.batch_size:
        raise RfprobeError(f"{len(train_data)} training examples is fewer than one batch (--batch-size {config.batch_size})")
    distributed.check_batch(ctx, config.batch_size)
    if ckpt is not None:
        model.load_state_dict(ckpt.model.state_dict())
    apply(model, trainable)
    model.to(device)
    if channels_last and not cuda and narrowest_conv(model) < CPU_CHANNELS_LAST_MIN_WIDTH:
        channels_last = False  # said in the run's summary line
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and ctx.world > 1:
        model = distributed.convert_sync_bn(model, device)
    optimizer = MaskedSGD(model, trainable, lr=config.lr_at(0), momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator(device).manual_seed(data_seed(config.seed))
    history: list[dict] = list(ckpt.meta.get("history") or []) if ckpt else []
    start = 0
    if ckpt is not None and source.name == "last.pt":
        optimizer.load_state_dict(ckpt.meta["optimizer"])
        generator.set_state(ckpt.meta["rng"]["data"])
        torch.set_rng_state(ckpt.meta["rng"]["torch"])
        start = int(ckpt.epoch)
    runner = model
    if ctx.world > 1 and trainable.tensors:
        runner = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        runner = torch.compile(runner)
    return Run(out=out, device=device, amp=amp, channels_last=channels_last, normalization=normalization,
               train_data=train_data.to(device), test_data=test_data.to(device), num_classes=num_classes, model=model,
               runner=runner, trainable=trainable, optimizer=optimizer, generator=generator, history=history,
               start=start, resumed=ckpt is not None)


def _loop(config: Config, ctx: distributed.Context, run: Run) -> None:
    """Epoch 0 (init.pt, unless resuming), then train, evaluate and checkpoint epoch by epoch."""
    out, model, history = run.out, run.model, run.history
    hparams = {**config.hparams(), "world_size": ctx.world, "device_type": run.device.type, "command": " ".join(sys.argv)}

    def save(path: Path, epoch: int, resumable: bool) -> None:
        meta = {"dataset": config.dataset, "mode": config.mode, "bn_init": config.bn_init, "seed": config.seed,
                "epoch": epoch, "metrics": {k: history[-1][k] for k in METRICS if history[-1].get(k) is not None},
                "normalization": run.normalization.to_meta(), "hparams": hparams, "history": history}
        if run.trainable.masks:
            meta["masks"] = {name: mask.cpu() for name, mask in run.trainable.masks.items()}
        if resumable:
            meta["optimizer"] = run.optimizer.state_dict()
            meta["rng"] = {"data": run.generator.get_state(), "torch": torch.get_rng_state()}
        save_checkpoint(path, model, arch=config.arch, num_classes=run.num_classes, **meta)

    def test_metrics() -> dict:
        distributed.broadcast_buffers(ctx, model)
        return evaluate(model, run.test_data, ctx, batch_size=config.eval_batch_size, amp=run.amp,
                        channels_last=run.channels_last)

    if ctx.main:
        rundir.reset(out, config.overwrite and not run.resumed)
        rundir.write_config(out, to_toml(config))
    distributed.barrier(ctx)
    total = sum(p.numel() for p in model.parameters())
    _say(ctx, f"{config.arch} mode {config.mode}: {run.trainable.count(model):,} of {total:,} parameters train; "
              f"{len(run.train_data)} train / {len(run.test_data)} test {config.dataset} examples; {run.device}"
              f"{' (NCHW: channels_last corrupts memory with convs under 8 channels on the CPU)' if config.channels_last and not run.channels_last else ''}"
              f"{f' x {ctx.world} processes' if ctx.world > 1 else ''}; {out}"
              f"{f' (resumed at epoch {run.start})' if run.resumed else ''}; {config.schedule()}")
    training = config.mode != "none"
    epochs = config.epochs if training else 0
    if not run.resumed:
        empty = {k: None for k in METRICS}
        history.append({"epoch": 0, "lr": None, **empty, **(test_metrics() if config.eval_every else {})})
        if ctx.main:
            save(out / "init.pt", 0, resumable=False)
            rundir.write_metrics(out, history)
        _say(ctx, _summary(history[-1], epochs))

    for epoch in range(run.start, epochs):
        lr = config.lr_at(epoch)
        run.optimizer.set_lr(lr)
        stats = train_epoch(run.runner, run.train_data, run.optimizer, run.generator, ctx, batch_size=config.batch_size,
                            amp=run.amp, augmenting=config.augment, channels_last=run.channels_last,
                            progress=config.progress and ctx.main, description=f"epoch {epoch + 1}/{epochs}",
                            seed=data_seed(config.seed), epoch=epoch)
        done = epoch + 1
        last = done == epochs
        evaluated = bool(config.eval_every) and (done % config.eval_every == 0 or last)
        test = test_metrics() if evaluated else {k: None for k in METRICS if k.startswith("test_")}
        history.append({"epoch": done, "lr": lr, **stats, **test})
        _say(ctx, _summary(history[-1], epochs))
        if ctx.main:
            if config.save_every and done % config.save_every == 0:
                save(rundir.epoch_file(out, done), done, resumable=False)
            save(out / ("final.pt" if last else "last.pt"), done, resumable=not last)
            rundir.write_metrics(out, history)
            if last:
                (out / "last.pt").unlink(missing_ok=True)
    if not training and ctx.main:
        save(out / "final.pt", 0, resumable=False)
    distributed.barrier(ctx)
    _say(ctx, f"done: {out / 'final.pt'}")


def _summary(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.4g}")
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}")
    if row.get("test_loss") is not None:
        parts.append(f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}")
    if row.get("seconds") is not None:
        parts.append(f"{row['seconds']:.1f}s {row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
