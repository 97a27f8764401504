"""Sparsity pass on models from outside rfprobe (timm resnet50: BN + ReLU; timm ViT-tiny: LayerNorm + GELU,
probed before and after each GELU) vs a bare `inference_mode` evaluation of the same batches, side by side.

    python bench/bench_sparsity_models.py [--n 32] [--batch-size 16] [--repeats 3] [--threads 1] [--models A,B]

The pass includes its fixed costs (two fx traces and a shape propagation of the model), which weigh more the
fewer images there are: compare ratios at the same --n.

Both variants alternate `--repeats` times on the same synthetic 3x224x224 images, in reverse order every other
round; reported: the ratio of the medians (pass / bare) of wall and CPU time, per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_coverage import synthetic  # noqa: E402
from bench.bench_sparsity import bare, timed  # noqa: E402
from rfprobe.models import build_model  # noqa: E402
from rfprobe.passes import sparsity  # noqa: E402

MODELS = (("timm:resnet50", {}), ("timm:vit_tiny_patch16_224", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(m for m, _ in MODELS), help="comma-separated subset of MODELS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic((3, 224, 224), args.n)
    for arch, kwargs in (m for m in MODELS if m[0] in args.models.split(",")):
        model = build_model(arch, 10, seed=0, **kwargs).eval()
        variants = {"bare": lambda: bare(model, data, args.batch_size, "cpu"),
                    "sparsity": lambda: sparsity.run(model, data, batch_size=args.batch_size)}
        for fn in variants.values():
            fn()  # warm-up
        times = {name: [] for name in variants}
        for r in range(args.repeats):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                times[name].append(timed(variants[name]))
        wall = statistics.median(t[0] for t in times["sparsity"]) / statistics.median(t[0] for t in times["bare"])
        cpu = statistics.median(t[1] for t in times["sparsity"]) / statistics.median(t[1] for t in times["bare"])
        print(f"{arch}: {args.n} images, batch {args.batch_size}, {args.threads} thread(s): sparsity / bare "
              f"= {wall:.3f} (wall, ratio of medians), {cpu:.3f} (CPU); bare median "
              f"{statistics.median(t[0] for t in times['bare']):.2f} s", flush=True)


if __name__ == "__main__":
    main()
