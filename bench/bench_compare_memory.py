"""Peak memory of `rfprobe compare` over 20 checkpoints vs over 2: compare measures one checkpoint at a time,
so the high-water mark must not grow with the number of checkpoints (target: within 10%).

    python bench/bench_compare_memory.py [--arch cifar_resnet_20] [--checkpoints 2,20] [--passes affine,dead,sparsity,ablate,signal]

Each size runs `rfprobe compare` in a fresh process (on synthetic data, 1,000 examples, one thread) over that
many checkpoints of `--arch` (random inits, different seeds) and reads its peak RSS from `os.wait4` (the
child's own `ru_maxrss`: torch, the data, one model, batches and activations); run times are printed too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rfprobe.checkpoint import save_checkpoint
from rfprobe.models import build_model


def peak_rss(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command in a fresh process (`env`: default this one's with one
    OpenMP thread). `os.wait4`'s `ru_maxrss` is the largest of the process and the children it waited for."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar_resnet_20")
    parser.add_argument("--checkpoints", default="2,20")
    parser.add_argument("--passes", default="affine,dead,sparsity,ablate,signal")
    args = parser.parse_args()
    sizes = [int(n) for n in args.checkpoints.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(max(sizes)):
            save_checkpoint(root / "ckpt" / f"s{seed:02d}.pt", build_model(args.arch, 10, seed=seed), mode="bn",
                            dataset="synthetic", epoch=1, seed=seed)
        files = sorted(str(p) for p in (root / "ckpt").iterdir())
        results = {}
        for n in sizes:
            command = [sys.executable, "-m", "rfprobe.cli", "compare", *files[:n], "--out", str(root / f"study{n}"),
                       "--passes", args.passes, "--dataset", "synthetic", "--limit", "1000", "--ablate-seeds", "1",
                       "--ablate-fractions", "0,0.5", "--signal-batch", "32", "--device", "cpu"]
            results[n] = peak_rss(command)
            print(f"{n:3d} checkpoints: peak RSS {results[n][0]:7.1f} MiB, {results[n][1]:6.1f} s", flush=True)
    small, large = results[min(sizes)][0], results[max(sizes)][0]
    print(f"peak RSS ratio {max(sizes)} / {min(sizes)} checkpoints: {large / small:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
