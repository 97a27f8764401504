"""Exact region walk vs dense sampling on the same segments, and walk throughput on ResNet-20.

For each case: the walk's breakpoints and time, and for each sampling resolution the sign changes seen
between consecutive samples, the time, and a check that every sampled change has a walk breakpoint in
its interval (the walk finds every crossing sampling sees). Breakpoints per second of the walk on a
random-init ResNet-20 with BN statistics recomputed on CIFAR-10 test images.

Run: `nice -n 10 .venv/bin/python bench/bench_partition.py [--data-root /work/shared/data/cifar10] [--threads 1]`
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rfprobe.data import load_dataset, resolve_device
from rfprobe.geometry import Tangent, walk
from rfprobe.models import build_model
from rfprobe.passes import partition


def sampled_changes(tf: Tangent, a: torch.Tensor, b: torch.Tensor, samples: int) -> list[np.ndarray]:
    """Per segment: the left sample parameter t_i of every interval [t_i, t_i+1] whose sign pattern changes."""
    t = torch.linspace(0, 1, samples, dtype=torch.float64, device=tf.device)
    out = []
    for i in range(a.shape[0]):
        d = (b[i] - a[i]).flatten()
        previous, changes = None, []
        for start in range(0, samples, tf.rows(256)):
            ts = t[start:start + tf.rows(256)]
            signs = tf.signs(a[i].flatten()[None] + ts[:, None] * d[None], batch=tf.rows(256))
            if previous is not None:
                signs = torch.cat([previous, signs])
                ts = torch.cat([t[start - 1:start], ts])
            changed = (signs[1:] != signs[:-1]).any(1)
            changes.append(ts[:-1][changed].cpu().numpy())
            previous = signs[-1:]
        out.append(np.concatenate(changes))
    return out


def compare(name: str, tf: Tangent, a: torch.Tensor, b: torch.Tensor, resolutions) -> None:
    t0 = time.perf_counter()
    exact = walk(tf, a, b, batch=tf.rows(64))
    walk_s = time.perf_counter() - t0
    n_exact = int(exact.counts.sum())
    print(f"\n{name}: {a.shape[0]} segments, {tf.n_units} units")
    print(f"  exact walk          {n_exact:7d} breakpoints  {walk_s:8.2f} s  {exact.jvps} JVPs  "
          f"{n_exact / walk_s:9.0f} breakpoints/s")
    for samples in resolutions:
        t0 = time.perf_counter()
        changes = sampled_changes(tf, a, b, samples)
        sample_s = time.perf_counter() - t0
        step = 1 / (samples - 1)
        missed = sum(int(((bp[None, :] >= c[:, None]) & (bp[None, :] <= c[:, None] + step)).any(1).__invert__().sum())
                     for c, bp in zip(changes, exact.t))
        seen = sum(len(c) for c in changes)
        print(f"  sampling {samples:7d}   {seen:7d} changes seen ({seen / max(n_exact, 1):6.1%} of the walk's)  "
              f"{sample_s:8.2f} s  ({sample_s / walk_s:6.1f}x the walk)  sampled changes without a walk breakpoint: {missed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="/work/shared/data/cifar10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resnet-segments", type=int, default=2)
    parser.add_argument("--resnet-radius", type=float, default=0.25)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--only", choices=("mlp", "resnet"), help="run one of the two cases")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)

    if args.only != "resnet":
        run_mlp(device, g)
    if args.only != "mlp":
        run_resnet(args, device, g)


def run_mlp(device, g) -> None:
    moons = load_dataset("toy2d:moons", "train", n=1000)
    model = partition.recalibrate_bn(build_model("mlp_4x64", 2, seed=0), moons, 1000, device)
    tf = Tangent.from_model(model, device=device)
    x, _ = partition._points(moons, 1000, device)
    segs = partition.segments(x, 32, 0.25, g)
    tf.jvp(x[:2], x[:2])  # torch's one-time JVP set-up out of the timings
    compare("mlp_4x64 (BN recalibrated on moons), train-train segments", tf, *segs["train-train"], (1001, 10001, 100001))



def run_resnet(args, device, g) -> None:
    cifar = load_dataset("cifar10", "test", root=args.data_root, limit=args.calibration_images)
    resnet = partition.recalibrate_bn(build_model("cifar_resnet_20", seed=0), cifar, 100, device)
    tf = Tangent.from_model(resnet, device=device)
    images, _ = partition._points(cifar.subset(2 * args.resnet_segments), 64, device)
    segs = partition.segments(images, args.resnet_segments, args.resnet_radius, g)
    compare(f"cifar_resnet_20 (random init, BN recalibrated on {args.calibration_images} CIFAR-10 test images), "
            f"segments of length {args.resnet_radius} in random directions", tf, *segs["radius"], (2001,))


if __name__ == "__main__":
    main()
