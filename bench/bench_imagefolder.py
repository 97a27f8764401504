"""A pass over an image folder, streamed through DataLoader workers: its cost against a bare evaluation fed by
the same DataLoader, the throughput against the number of workers, and the peak memory at 1,000 vs 10,000
images.

    python bench/bench_imagefolder.py [--folder DIR] [--data-root /work/shared/data/cifar10] [--side 64]
        [--arch cifar_resnet_20] [--limit 2000] [--batch-size 250] [--workers 2] [--repeats 3] [--threads 1]

Without `--folder` it writes one: the 10,000 CIFAR-10 test images, each resized to `--side` pixels and saved as
a JPEG (quality 90) in its class's folder, so the decoding work (JPEG decode, resize 37, centre crop 32 for a
CIFAR ResNet) is real while the model stays small enough for a CPU.

- Cost: `bare` (forward passes and an argmax over `rfprobe.data.batches`, the same DataLoader the pass uses)
  and `sparsity` (the pass) alternate `--repeats` times on the first `--limit` images, in reverse order every
  other round; the ratio of the medians (wall time) is reported. Decoding is shared by both, so the ratio is
  what the probes add to a streamed evaluation.
- Throughput: `bare` in images/s with 0 (decoding in the main process), 1, 2, ... `--max-workers` workers.
- Memory: the pass on the first 1,000 and the first 10,000 images, each in a fresh subprocess that lists the
  whole folder, reporting `ru_maxrss` (the process's high-water mark) and its largest DataLoader worker's;
  target within 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rfprobe.data import batches, load_dataset
from rfprobe.loading import DataOptions
from rfprobe.models import build_model
from rfprobe.passes import sparsity


def write_folder(cifar_root: str, out: Path, side: int) -> Path:
    """The CIFAR-10 test split as JPEGs of `side` x `side` pixels in class folders under `out`."""
    from PIL import Image

    data = load_dataset("cifar10", "test", root=cifar_root)
    for name in data.classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(data)):
        image = Image.fromarray(data.x[i].permute(1, 2, 0).numpy()).resize((side, side), Image.BILINEAR)
        image.save(out / data.classes[int(data.y[i])] / f"{i:05d}.jpg", quality=90)
    return out


def streamed(folder: Path, model, limit: int, workers: int):
    options = DataOptions(dataset="imagefolder", root=str(folder), limit=limit, workers=workers)
    return options.for_checkpoint(None, options.load(), model=model)


def bare(model, data, batch_size: int) -> int:
    correct = 0
    with torch.inference_mode():
        for x, y in batches(data, batch_size, "cpu"):
            correct += int((model(x).argmax(1) == y).sum())
    return correct


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(args) -> None:
    model = build_model(args.arch, seed=0).eval()
    data = streamed(Path(args.folder), model, args.child, args.workers)
    sparsity.run(model, data, batch_size=args.batch_size)
    print(json.dumps({"n": args.child, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--data-root", default=os.environ.get("RFPROBE_DATA", "/work/shared/data/cifar10"))
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--arch", default="cifar_resnet_20")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args)
        return
    scratch = None
    if args.folder is None:
        scratch = tempfile.TemporaryDirectory(prefix="rfprobe-bench-images-")
        start = time.perf_counter()
        args.folder = str(write_folder(args.data_root, Path(scratch.name), args.side))
        print(f"wrote 10,000 JPEGs of {args.side} px in {time.perf_counter() - start:.0f} s")
    model = build_model(args.arch, seed=0).eval()
    data = streamed(Path(args.folder), model, args.limit, args.workers)
    results: dict = {"arch": args.arch, "limit": len(data), "batch_size": args.batch_size, "workers": args.workers,
                     "threads": args.threads, "transform": data.x.transform.describe(), "cpus": os.cpu_count()}
    bare(model, data.subset(args.batch_size), args.batch_size)
    times: dict[str, list[float]] = {"bare": [], "sparsity": []}
    runs = {"bare": lambda: bare(model, data, args.batch_size),
            "sparsity": lambda: sparsity.run(model, data, batch_size=args.batch_size)}
    for round_ in range(args.repeats):
        for name in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
            times[name].append(seconds(runs[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    results["seconds"] = times
    results["pass_over_bare"] = medians["sparsity"] / medians["bare"]
    print(f"{args.arch}, {len(data)} images, {args.workers} workers, {args.threads} thread(s): bare "
          f"{medians['bare']:.2f} s ({len(data) / medians['bare']:.0f} images/s), sparsity {medians['sparsity']:.2f} s; "
          f"ratio {results['pass_over_bare']:.3f}")
    throughput = {}
    for workers in range(args.max_workers + 1):
        one = streamed(Path(args.folder), model, args.limit, workers)
        throughput[workers] = len(one) / statistics.median(seconds(lambda: bare(model, one, args.batch_size))
                                                           for _ in range(2))
        print(f"bare evaluation, {workers} workers: {throughput[workers]:.0f} images/s")
    results["images_per_second_by_workers"] = throughput
    if not args.skip_memory:
        memory = {}
        for n in (1000, 10_000):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--folder", args.folder, "--arch", args.arch,
                                  "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            memory[n] = found["peak_rss_mib"]
            results.setdefault("worker_peak_rss_mib", {})[n] = found["worker_peak_rss_mib"]
            print(f"peak RSS, sparsity on {n} images: {memory[n]:.0f} MiB (largest worker {found['worker_peak_rss_mib']:.0f} MiB)")
        results["peak_rss_mib"] = memory
        results["peak_ratio_10k_over_1k"] = memory[10_000] / memory[1000]
        print(f"peak at 10,000 / peak at 1,000: {results['peak_ratio_10k_over_1k']:.3f}")
    path = Path(__file__).parent / "results" / "imagefolder.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
