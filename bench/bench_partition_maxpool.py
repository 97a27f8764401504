"""The exact walk through max-pooling nets: the incremental walk against a full dual evaluation at every crossing
(`walk(..., refresh=1)`), on the same segments, with the number of argmax changes among the breakpoints.

    python bench/bench_partition_maxpool.py [--models cifar_vgg_11,torchvision:resnet18] [--size 32]
        [--segments 2] [--length 0.05] [--threads 1]

Segments of `--length` in uniformly random directions from N(0, I) points of shape 3 x size x size; both walks
must give the same breakpoints (to 1e-9 in t), which the script checks and prints.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rfprobe.geometry import Tangent, walk
from rfprobe.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar_vgg_11,torchvision:resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--length", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        model = build_model(name, 10, seed=0)
        model.rfprobe_input_shape = (3, args.size, args.size)
        tf = Tangent.from_model(model)
        g = torch.Generator().manual_seed(0)
        a = torch.randn((args.segments, 3, args.size, args.size), generator=g, dtype=torch.float64)
        d = torch.randn(a.shape, generator=g, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * args.length
        start = time.perf_counter()
        incremental = walk(tf, a, a + d)
        middle = time.perf_counter()
        full = walk(tf, a, a + d, refresh=1)
        end = time.perf_counter()
        pools = [i for i, layer in enumerate(tf.layers) if layer.is_pool]
        argmax = sum(int(np.isin(layers, pools).sum()) for layers in incremental.layer)
        same = all(len(x) == len(y) and (len(x) == 0 or np.abs(x - y).max() <= 1e-9)
                   for x, y in zip(incremental.t, full.t))
        print(f"{name}: {incremental.counts.sum()} breakpoints ({argmax} argmax changes) on {args.segments} segments "
              f"of length {args.length}; incremental {middle - start:.1f} s ({incremental.evaluations} full "
              f"evaluations), full evaluation at every crossing {end - middle:.1f} s; same breakpoints: {same}")


if __name__ == "__main__":
    main()
