"""Trainer speed, side by side in one run (ratios, not seconds): `python bench/bench_train.py`.

(a) step time of `bn` vs `all` mode (the trainer's own epoch loop; frozen weights get no weight gradients),
    in the trainer's default channels_last memory format and in plain NCHW;
(b) the trainer's epoch throughput vs a plain reference loop: a torch Dataset of HWC uint8 images going
    through PIL + torchvision transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
    Normalize) and a DataLoader, the same model (NCHW), the same SGD. Both train in `all` mode on the same
    images; the trainer is timed with channels_last (its default) and with NCHW (the data path alone).
Modes and loops are interleaved over `--repeats` rounds and the fastest epoch of each is compared (the
minimum: on a shared machine other jobs only ever add time).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from rfprobe.data import load_dataset, resolve_device
from rfprobe.models import build_model
from rfprobe.trainable import apply, select
from train.distributed import Context
from train.loop import train_epoch
from train.optim import MaskedSGD


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std):
        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = y.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_epoch(model, loader, optimizer, device) -> float:
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ours_epoch(model, data, optimizer, generator, ctx, batch_size, channels_last, amp=False) -> float:
    stats = train_epoch(model, data, optimizer, generator, ctx, batch_size=batch_size, amp=amp, channels_last=channels_last)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return stats["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar_resnet_20")
    parser.add_argument("--steps", type=int, default=10, help="steps of batch 128 per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="our loop in the trainer's autocast (bf16; the reference stays fp32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.steps * args.batch_size
    data = load_dataset("synthetic", "train", limit=n)
    on_device = data.to(device)
    ctx = Context(0, 1, device)

    def setup(mode: str, channels_last: bool):
        model = build_model(args.arch, seed=0).to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        plan = select(model, mode)
        apply(model, plan)
        return model, MaskedSGD(model, plan, lr=0.1, momentum=0.9, weight_decay=1e-4), channels_last

    runs = {}
    ours = {f"ours_{mode}{'' if cl else '_nchw'}": setup(mode, cl) for cl in (True, False) for mode in ("all", "bn")}
    generator = torch.Generator(device).manual_seed(0)
    ref_model = build_model(args.arch, seed=0).to(device)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loaders = {w: torch.utils.data.DataLoader(PILDataset(data.x, data.y, data.mean, data.std), batch_size=args.batch_size,
                                              shuffle=True, drop_last=True, num_workers=w, persistent_workers=w > 0)
               for w in args.workers}
    for name, (model, opt, cl) in ours.items():  # warm-up
        ours_epoch(model, on_device, opt, generator, ctx, args.batch_size, cl, args.amp)
    for w, loader in loaders.items():
        reference_epoch(ref_model, loader, ref_opt, device)
    for _ in range(args.repeats):
        for name, (model, opt, cl) in ours.items():
            runs.setdefault(name, []).append(ours_epoch(model, on_device, opt, generator, ctx, args.batch_size, cl, args.amp))
        for w, loader in loaders.items():
            runs.setdefault(f"reference_workers{w}", []).append(reference_epoch(ref_model, loader, ref_opt, device))
    best = {k: min(v) for k, v in runs.items()}
    report = {
        "arch": args.arch, "device": str(device), "threads": args.threads, "images_per_epoch": n, "repeats": args.repeats,
        "seconds_per_step": {k: v / args.steps for k, v in best.items()},
        "images_per_s": {k: n / v for k, v in best.items()},
        "bn_over_all_step_time": best["ours_bn"] / best["ours_all"],
        "bn_over_all_step_time_nchw": best["ours_bn_nchw"] / best["ours_all_nchw"],
        **{f"ours_over_reference_workers{w}_throughput": best[f"reference_workers{w}"] / best["ours_all"] for w in args.workers},
        **{f"ours_nchw_over_reference_workers{w}_throughput": best[f"reference_workers{w}"] / best["ours_all_nchw"]
           for w in args.workers},
    }
    for key, value in report.items():
        print(f"{key:42s} {json.dumps(value) if isinstance(value, dict) else value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
