"""Sparsity pass vs a bare `inference_mode` evaluation of the same model and data, side by side; and its
peak memory at 1,000 vs 10,000 examples.

    python bench/bench_sparsity.py --data-root /work/shared/data/cifar10 [--arch cifar_resnet_20]
        [--limit 10000] [--batch-size 500] [--repeats 3] [--threads N] [--device auto]

Time: a bare evaluation, the pass, and the pass with `compile=True` (each probe's reductions fused by
torch.compile; its one-time compile happens in the warm-up) alternate `--repeats` times on the same loaded
data, in reverse order every other round (so no variant always runs after another); the ratios to the bare evaluation of the medians and of the minima are reported for wall time and for
this process's CPU time (`time.process_time`, steadier when other jobs share the machine; with CUDA only the
wall time means anything); target <= 1.10. Memory: each size runs in a fresh subprocess that loads the full split (so the dataset's
own memory is the same at both sizes), runs the pass on the first N examples and reports its peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the high-water mark of the whole process: torch, the
loaded split, batches, activations and accumulators); target: peak at 10,000 within 10% of peak at 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from rfprobe.data import batches, load_dataset, resolve_device
from rfprobe.models import build_model
from rfprobe.passes import sparsity


def bare(model, data, batch_size, device) -> float:
    """Accuracy with no probes: the reference cost of one pass over the data."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for x, y in batches(data, batch_size, device):
            correct += (model(x).argmax(1) == y).sum()
    return float(correct) / len(data)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine the CPU time is the steadier one."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def child(args) -> None:
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, "test", root=args.data_root)
    model = build_model(args.arch, seed=0).to(device).eval()
    sparsity.run(model, data.subset(args.child), batch_size=args.batch_size, device=device)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    print(json.dumps({"n": args.child, "peak_rss_mib": peak_kib / 1024, "cuda_peak_mib": gpu / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("RFPROBE_DATA", "/work/shared/data/cifar10"))
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "synthetic"),
                        help="synthetic where real CIFAR-10 is absent")
    parser.add_argument("--arch", default="cifar_resnet_20")
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args)
        return

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, "test", root=args.data_root, limit=args.limit)
    model = build_model(args.arch, seed=0).to(device).eval()
    print(f"{args.arch}, {len(data)} {args.dataset} test images, batch {args.batch_size}, device {device}, "
          f"{torch.get_num_threads()} threads; load: {os.getloadavg()}", flush=True)
    variants = {
        "bare": lambda d: bare(model, d, args.batch_size, device),
        "sparsity": lambda d: sparsity.run(model, d, batch_size=args.batch_size, device=device),
        "sparsity --compile": lambda d: sparsity.run(model, d, batch_size=args.batch_size, device=device, compile=True),
    }
    warm = timed(lambda: [run(data.subset(2 * args.batch_size)) for run in variants.values()])
    print(f"  warm-up (allocator, kernels, the one compile): {warm[0]:.1f} s", flush=True)
    times = {name: [] for name in variants}
    for round_ in range(args.repeats):
        order = list(variants.items()) if round_ % 2 == 0 else list(variants.items())[::-1]
        for name, run in order:
            times[name].append(timed(lambda: run(data)))
        print("  " + ", ".join(f"{name} {w:.2f} s wall / {c:.2f} s CPU" for name, ((w, c), *_) in
                               ((n, t[-1:]) for n, t in times.items())), flush=True)
    for i, kind in enumerate(("wall", "CPU")):
        median = {k: statistics.median(t[i] for t in v) for k, v in times.items()}
        best = {k: min(t[i] for t in v) for k, v in times.items()}
        for name in ("sparsity", "sparsity --compile"):
            paired = statistics.median(t[i] / b[i] for t, b in zip(times[name], times["bare"]))
            print(f"{kind} time: median bare {median['bare']:.2f} s, {name} {median[name]:.2f} s, ratio of medians "
                  f"{median[name] / median['bare']:.3f}, ratio of minima {best[name] / best['bare']:.3f}, median of "
                  f"the rounds' ratios {paired:.3f} (target <= 1.10)")

    if args.skip_memory:
        return
    peaks = {}
    for n in (1_000, 10_000):
        command = [sys.executable, __file__, "--child", str(n), "--data-root", args.data_root, "--dataset", args.dataset,
                   "--arch", args.arch,
                   "--batch-size", str(args.batch_size), "--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[n] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  {n:>6} examples: peak RSS {peaks[n]['peak_rss_mib']:.1f} MiB"
              + (f", CUDA peak {peaks[n]['cuda_peak_mib']:.1f} MiB" if peaks[n]["cuda_peak_mib"] else ""), flush=True)
    growth = peaks[10_000]["peak_rss_mib"] / peaks[1_000]["peak_rss_mib"] - 1
    print(f"peak RSS at 10,000 vs 1,000: {100 * growth:+.1f}% (target within 10%); load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
