"""Study throughput: `rfprobe compare` over N checkpoints against the same passes run alone on each.

    python bench/bench_compare.py [--checkpoints 3] [--passes affine,dead,sparsity,signal] [--limit 2000]
                                  [--data-root /work/shared/data/cifar10] [--repeats 2]

N random `cifar_resnet_8` inits (seeds 0..N-1) are saved as checkpoints; then, in fresh processes, each round
runs (order alternating between rounds, the median of each side reported):
- `compare`: one `rfprobe compare CKPT... --passes P --limit L --out DIR` (one process: the data decoded once
  per dataset, every pass on every checkpoint, the merged study written; `--no-report`-free, as users run it);
- `alone`: `rfprobe PASS CKPT --limit L --out FILE` for every pass and checkpoint, one process each, and their
  summed wall time;
- `alone, in one process`: every pass on every checkpoint through the library (`Pass.run`, the checkpoint and
  the data loaded for each call, each result written to its zarr store), one process started once like
  `compare`: the same work as `alone` without a process start per command, and without compare's merged study.
The ratios compare / alone are the figures (target <= 1). Real CIFAR-10 test images where `--data-root` has
them, else the synthetic set; one torch thread (`OMP_NUM_THREADS=1`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_compare_memory import peak_rss

SCRIPT_ALONE_IN_PROCESS = """
import sys, time, torch
torch.set_num_threads(1)
from rfprobe.loading import DataOptions, load_one
from rfprobe.passes import REGISTRY
from rfprobe.results import save_result, stack
dataset, root, limit, passes, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:]
start = time.perf_counter()
for name in passes:
    p = REGISTRY[name]
    for path in paths:
        ckpt = load_one(path, None, None, "cpu")
        data = None
        if p.needs_data():
            if p.data_input is not None:
                data = p.data_input(dataset, p.defaults(), split="test", root=root, download=False)
            else:
                options = DataOptions(dataset=dataset, root=root, limit=limit)
                data = options.load()
            data = DataOptions(dataset=dataset, root=root).for_checkpoint(ckpt, data, p.data.get("batch_size"))
        ds = p.run(ckpt, data, {}, batch_size=p.data.get("batch_size") or 500 if p.data else 500, device="cpu",
                   command=None, progress=False, load=lambda q: load_one(q, None, None, "cpu"))
        save_result(stack([ds], [path]), f"{path}.{name}.zarr", overwrite=True)
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--passes", default="affine,dead,sparsity,signal")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--data-root", default="/work/shared/data/cifar10")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from rfprobe.checkpoint import save_checkpoint
    from rfprobe.models import build_model
    from rfprobe.passes import REGISTRY

    real = (Path(args.data_root) / "cifar-10-batches-bin").is_dir() or (Path(args.data_root) / "cifar-10-batches-py").is_dir()
    dataset = "cifar10" if real else "synthetic"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RFPROBE_DATA": args.data_root}
    passes = args.passes.split(",")
    data_flags = ["--dataset", dataset, "--limit", str(args.limit)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for seed in range(args.checkpoints):
            path = Path(tmp) / f"r8-seed{seed}.pt"
            save_checkpoint(path, build_model("cifar_resnet_8", seed=seed), arch="cifar_resnet_8", num_classes=10)
            paths.append(str(path))
        rfprobe = [str(Path(sys.executable).with_name("rfprobe"))]
        results: dict[str, list[float]] = {"compare": [], "alone": [], "alone, in one process": []}

        def run_compare(r):
            return peak_rss([*rfprobe, "compare", *paths, "--passes", args.passes, *data_flags, "--out",
                             f"{tmp}/study{r}"], env)[1]

        def run_alone(r):
            total = 0.0
            for name in passes:
                for i, path in enumerate(paths):
                    p = REGISTRY[name]
                    flags = (["--dataset", dataset] if p.data_input is not None else data_flags) if p.needs_data() else []
                    total += peak_rss([*rfprobe, name, path, *flags, "--out", f"{tmp}/alone{r}-{name}-{i}.zarr"],
                                      env)[1]
            return total

        def run_in_process(r):
            return peak_rss([sys.executable, "-c", SCRIPT_ALONE_IN_PROCESS, dataset, args.data_root, str(args.limit),
                             args.passes, *paths], env)[1]

        variants = [("compare", run_compare), ("alone", run_alone), ("alone, in one process", run_in_process)]
        for r in range(args.repeats):
            for name, fn in (variants if r % 2 == 0 else variants[::-1]):
                results[name].append(fn(r))
                print(f"round {r}: {name} {results[name][-1]:.1f} s", flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.checkpoints} checkpoints x passes {args.passes}, {dataset} test, limit {args.limit}, 1 thread, "
          f"median of {args.repeats} rounds")
    print("| variant | wall (s) | compare / variant |")
    print("| --- | --- | --- |")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} | **{median['compare'] / value:.2f}** |")


if __name__ == "__main__":
    main()
