"""One training epoch and one evaluation, with data resident on the device as tensors, or streamed from an image
folder through DataLoader workers (`rfprobe.imagefolder.TrainImages`)."""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfprobe.data import Data, batches, normalize
from rfprobe.progress import track
from train import augment
from train.distributed import Context, sum_all
from train.optim import MaskedSGD


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled (BN runs in fp32 inside cuDNN); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare(x: torch.Tensor, data: Data, channels_last: bool) -> torch.Tensor:
    """uint8 (or float) batch -> normalised float, in the memory format the model runs in."""
    x = normalize(x, data.mean, data.std)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x


def epoch_plan(n: int, generator: torch.Generator, augmenting: bool):
    """The epoch's random draws, identical on every rank: a permutation of the n examples, then the
    crop offsets and flips of the n images in permutation order (drawn for the whole epoch at once)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    draws = augment.draw(n, generator) if augmenting else None
    return order, draws


def _streamed_steps(data: Data, order: torch.Tensor, ctx: Context, batch_size: int, per_rank: int, steps: int,
                    augmenting: bool, seed: int, epoch: int):
    """(uint8 x, y) per step of an image-folder epoch: this rank's slice of each global batch of `order`,
    decoded and augmented by `data.workers` DataLoader processes (`TrainImages`); files that do not decode are
    dropped from their batch with one line each."""
    from rfprobe.imagefolder import TrainImages, drop_undecodable

    items = TrainImages(data.x, data.x.transform.crop, seed, epoch, augmenting)
    order = order.cpu()
    plan = [order[step * batch_size + ctx.rank * per_rank:][:per_rank].tolist() for step in range(steps)]
    loader = torch.utils.data.DataLoader(items, batch_sampler=plan, num_workers=data.workers,
                                         pin_memory=ctx.device.type == "cuda",
                                         prefetch_factor=2 if data.workers else None)
    for x, y, errors in loader:
        x, y = drop_undecodable(x, y, errors)
        if len(y):
            yield x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)


def train_epoch(model: nn.Module, data: Data, optimizer: MaskedSGD, generator: torch.Generator, ctx: Context, *,
                batch_size: int, augmenting: bool = True, amp: bool = True, channels_last: bool = False,
                progress: bool = False, description: str = "", seed: int = 0, epoch: int = 0) -> dict:
    """One pass over `data` (resident on the device, or an image folder streamed) in global batches of
    `batch_size` (the last partial batch is dropped); rank r takes the r-th contiguous slice of each global
    batch. `seed` and `epoch` seed an image folder's per-image augmentation. Returns train loss/accuracy over
    all ranks, images seen, and seconds."""
    start = time.perf_counter()
    model.train()
    n = len(data)
    steps = n // batch_size
    per_rank = batch_size // ctx.world
    if data.streamed:
        order = torch.randperm(n, generator=generator, device=generator.device)
        batches_of = _streamed_steps(data, order, ctx, batch_size, per_rank, steps, augmenting, seed, epoch)
    else:
        augmenting = augmenting and data.x.dtype == torch.uint8 and data.x.dim() == 4
        order, draws = epoch_plan(n, generator, augmenting)

        def resident():
            for step in range(steps):
                lo = step * batch_size + ctx.rank * per_rank
                index = order[lo:lo + per_rank]
                x = data.x[index]
                yield (augment.crop_flip(x, *(d[lo:lo + per_rank] for d in draws)) if augmenting else x), data.y[index]

        batches_of = resident()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device if data.streamed else data.x.device)
    for x, y in track(batches_of, steps, description, enabled=progress, unit=per_rank):
        totals[2] += y.shape[0]
        x = prepare(x, data, channels_last)
        with autocast(ctx.device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            totals[0] += loss.detach().double() * y.shape[0]
            totals[1] += (logits.argmax(1) == y).sum()
    sum_all(ctx, totals)
    loss_sum, correct, count = totals.tolist()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "train_images": int(count), "seconds": seconds, "images_per_s": count / seconds if seconds else 0.0}


def evaluate(model: nn.Module, data: Data, ctx: Context, *, batch_size: int = 500, amp: bool = True,
             channels_last: bool = False) -> dict:
    """Mean cross-entropy, accuracy and top-5 accuracy (the label among the 5 largest logits; ImageNet's usual
    figure) over `data` with the model in eval mode; each rank evaluates a contiguous shard and the sums are added
    over ranks."""
    model.eval()
    n = len(data)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    shard = data.select(slice(lo, hi))
    device = ctx.device if data.streamed else data.x.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.inference_mode(), autocast(ctx.device, amp):
        for x, y in batches(shard, batch_size, device):
            totals[2] += y.shape[0]
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            logits = model(x).float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[3] += (logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum()
    sum_all(ctx, totals)
    loss_sum, correct, count, top5 = totals.tolist()
    return {"test_loss": loss_sum / max(count, 1), "test_acc": correct / max(count, 1),
            "test_top5": top5 / max(count, 1)}
