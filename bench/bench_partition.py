"""Region walk and boundary distances: rfprobe's walk, the plain walk and dense sampling, side by side.

For each network (random init, BN recalibrated on real data), on the same segments, one at a time:
- `walk`: `rfprobe.geometry.walk` (incremental: updates only what each crossing changes);
- `plain`: the plain walk (one `torch.func.jvp` of the whole network per region; rfprobe's walk before the
  incremental one, kept as the test oracle in tests/reference_walk.py);
- `sampling`: the activation pattern at N equally spaced points (a change between consecutive samples = a
  crossing seen), with the crossings it misses.
Both walks must agree (same counts, largest |dt| printed). Then `gradient_norms` (exact ||grad_x z_k|| for
every unit) against the former implementation (copies of the point, `torch.func.jvp`), norms compared.

Run: `.venv/bin/python bench/bench_partition.py [--data-root /work/shared/data/cifar10] [--threads 1]`

`--end-to-end`: instead, the pass as a user runs it, `rfprobe partition CKPT` with every option at its default,
on a BN-only ResNet-8 (the demo's, synthetic data) and ResNet-20 (real CIFAR-10), each trained here first
(`END_TO_END`) unless given with `--checkpoint ARCH PATH`: wall time, peak memory (the process or a walk worker,
whichever is larger) and the seconds of each stage, on all the machine's cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_compare_memory import peak_rss  # noqa: E402
from reference_walk import plain_walk  # noqa: E402
from rfprobe.data import load_dataset, resolve_device  # noqa: E402
from rfprobe.geometry import Tangent, gradient_norms, walk  # noqa: E402
from rfprobe.models import build_model  # noqa: E402
from rfprobe.passes import partition  # noqa: E402


def sampled_changes(tf: Tangent, a: torch.Tensor, b: torch.Tensor, samples: int) -> np.ndarray:
    """The left sample parameter t_i of every interval [t_i, t_i+1] of a -> b whose sign pattern changes."""
    t = torch.linspace(0, 1, samples, dtype=torch.float64, device=tf.device)
    d = (b - a).flatten()
    rows = tf.rows(256)
    previous, changes = None, []
    for start in range(0, samples, rows):
        ts = t[start:start + rows]
        signs = tf.signs(a.flatten()[None] + ts[:, None] * d[None], batch=rows)
        if previous is not None:
            signs = torch.cat([previous, signs])
            ts = torch.cat([t[start - 1:start], ts])
        changed = (signs[1:] != signs[:-1]).any(1)
        changes.append(ts[:-1][changed].cpu().numpy())
        previous = signs[-1:]
    return np.concatenate(changes)


def timed(f):
    t0 = time.perf_counter()
    out = f()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def compare_walks(name: str, tf: Tangent, a: torch.Tensor, b: torch.Tensor, samples: int) -> dict:
    new_t, plain_t, sampled = [], [], []
    new_s = plain_s = sample_s = 0.0
    for i in range(a.shape[0]):
        found, s = timed(lambda: walk(tf, a[i:i + 1], b[i:i + 1]).t[0])
        new_t.append(found)
        new_s += s
        reference, s = timed(lambda: plain_walk(tf, a[i:i + 1], b[i:i + 1])[0])
        plain_t.append(reference)
        plain_s += s
        if samples:
            seen, s = timed(lambda: sampled_changes(tf, a[i], b[i], samples))
            sampled.append(seen)
            sample_s += s
    n_new, n_plain = sum(map(len, new_t)), sum(map(len, plain_t))
    same = all(len(x) == len(y) for x, y in zip(new_t, plain_t))
    dt = max((float(np.abs(x - y).max()) for x, y in zip(new_t, plain_t) if len(x) == len(y) and len(x)), default=0.0)
    print(f"\n{name}: {a.shape[0]} segments, {tf.n_units} ReLU units")
    print(f"  walk      {n_new:7d} breakpoints {new_s:8.2f} s {n_new / new_s:9.0f} breakpoints/s")
    print(f"  plain     {n_plain:7d} breakpoints {plain_s:8.2f} s {n_plain / plain_s:9.0f} breakpoints/s   "
          f"walk / plain speed: {plain_s / new_s:5.1f}x; same counts: {same}; largest |dt| {dt:.1e}")
    row = {"case": name, "breakpoints": n_new, "walk_bps": n_new / new_s, "plain_bps": n_plain / plain_s,
           "speedup": plain_s / new_s, "same": same, "dt": dt}
    if samples:
        step = 1 / (samples - 1)
        missed = sum(int((~((bp[None, :] >= c[:, None]) & (bp[None, :] <= c[:, None] + step)).any(1)).sum())
                     for c, bp in zip(sampled, new_t))
        seen = sum(map(len, sampled))
        print(f"  sampling  {seen:7d} changes seen at {samples} points per segment ({seen / max(n_new, 1):6.1%} of the "
              f"walk's) {sample_s:8.2f} s {seen / sample_s:9.0f} crossings/s; sampled changes with no walk "
              f"breakpoint: {missed}")
        row.update(sampled=seen, sampled_share=seen / max(n_new, 1), sampling_cps=seen / sample_s, missed=missed)
    return row


def former_gradient_norms(tf: Tangent, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """rfprobe's gradient norms before the dual forward: `chunk` copies of the point, each with one basis
    vector, through `torch.func.jvp`."""
    dim = int(np.prod(tf.input_shape))
    sumsq = torch.zeros(tf.n_units, dtype=tf.dtype, device=tf.device)
    for start in range(0, dim, chunk):
        c = min(chunk, dim - start)
        basis = torch.zeros((c, dim), dtype=tf.dtype, device=tf.device)
        basis[torch.arange(c), torch.arange(start, start + c)] = 1
        with torch.no_grad():
            _, (_, dzs, _) = torch.func.jvp(tf.net, (x.view(1, *tf.input_shape).repeat(c, *[1] * len(tf.input_shape)),),
                                            (basis.view(c, *tf.input_shape),))
        sumsq += torch.cat([dz.flatten(1) for dz in dzs], 1).square().sum(0)
    return sumsq.sqrt()


def compare_norms(name: str, tf: Tangent, x: torch.Tensor) -> dict:
    new, new_s = timed(lambda: gradient_norms(tf, x)[1])
    old, old_s = timed(lambda: former_gradient_norms(tf, x))
    error = float(((new - old).abs() / old.clamp_min(1e-300)).max())
    print(f"  gradient_norms of one point: {new_s:6.2f} s, former {old_s:6.2f} s: {old_s / new_s:4.1f}x; "
          f"largest relative difference {error:.1e}")
    return {"case": name, "norms_s": new_s, "former_norms_s": old_s, "norms_speedup": old_s / new_s,
            "norms_error": error}


def cifar_case(arch: str, cifar, device, segments: int, radius: float, g: torch.Generator):
    model = partition.recalibrate_bn(build_model(arch, seed=0), cifar, 100, device)
    tf = Tangent.from_model(model, device=device)
    images, _ = partition._points(cifar.subset(segments), 64, device)
    direction = torch.randn(images.shape, generator=g, dtype=torch.float64).to(images.device)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return tf, images, images + radius * direction


END_TO_END = {
    "cifar_resnet_8": ["cifar_resnet_8", "--mode", "bn", "--dataset", "synthetic", "--limit", "5000", "--test-limit",
                       "2000", "--epochs", "3", "--lr", "0.5"],
    "cifar_resnet_20": ["cifar_resnet_20", "--mode", "bn", "--dataset", "cifar10", "--limit", "5000",
                        "--test-limit", "1000", "--epochs", "1"],
}
"""the end-to-end checkpoints, trained by `python -m train` with these arguments: the demo's BN-only ResNet-8 (on
synthetic data) and a BN-only ResNet-20 after one epoch on 5,000 real CIFAR-10 images"""


def end_to_end(data_root: str, only, checkpoints: dict[str, str], device: str = "auto") -> None:
    """`rfprobe partition CKPT` with every option at its default, per network: wall time, peak memory and the
    seconds of each stage (the result's `stage_seconds`)."""
    import json
    import os
    import tempfile

    import xarray as xr

    env = {**os.environ, "RFPROBE_DATA": data_root}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, train_args in END_TO_END.items():
            if only is not None and arch not in only:
                continue
            path = checkpoints.get(arch)
            if path is None:
                path = f"{tmp}/{arch}/final.pt"
                if not any((Path(data_root) / d).is_dir() for d in ("cifar-10-batches-bin", "cifar-10-batches-py")):
                    train_args = [a if a != "cifar10" else "synthetic" for a in train_args]
                peak_rss([sys.executable, "-m", "train", *train_args, "--data-root", data_root, "--device", device,
                          "--out", f"{tmp}/{arch}"], env)
            out = f"{tmp}/{arch}.zarr"
            peak, wall = peak_rss([str(Path(sys.executable).with_name("rfprobe")), "partition", path, "--device",
                                   device, "--out", out], env)
            attrs = xr.open_zarr(out).attrs
            rows.append((arch, wall, peak, json.loads(attrs["stage_seconds"]), attrs["walk_jobs"]))
    stages = list(rows[0][3]) if rows else []
    print("\n| network | wall (s) | peak RSS (MiB) | walk workers | " + " | ".join(stages) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in stages) + " |")
    for arch, wall, peak, seconds, jobs in rows:
        print(f"| {arch} | **{wall:.1f}** | {peak:.0f} | {jobs} | " + " | ".join(f"{seconds[s]:.1f}" for s in stages)
              + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--end-to-end", action="store_true",
                        help="instead: `rfprobe partition CKPT` at its defaults on a ResNet-8 and a ResNet-20 "
                             "(wall time, peak memory, seconds per stage)")
    parser.add_argument("--checkpoint", nargs=2, action="append", default=[], metavar=("ARCH", "PATH"),
                        help="--end-to-end: use this checkpoint for ARCH instead of training one")
    parser.add_argument("--data-root", default="/work/shared/data/cifar10")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "synthetic"),
                        help="images for the CNN cases (synthetic where real CIFAR-10 is absent)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda (--end-to-end: also auto)")
    parser.add_argument("--segments", type=int, default=2, help="segments per CIFAR network")
    parser.add_argument("--radius", type=float, default=0.5, help="length of a CIFAR segment (normalised inputs)")
    parser.add_argument("--samples", type=int, default=2001, help="dense samples per CIFAR segment (0: none)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases (mlp_4x64, cifar_resnet_8, ...)")
    args = parser.parse_args()
    if args.end_to_end:
        end_to_end(args.data_root, args.only, dict(args.checkpoint), args.device)
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    rows = []
    wanted = lambda name: args.only is None or name in args.only  # noqa: E731

    if wanted("mlp_4x64"):
        moons = load_dataset("toy2d:moons", "train", n=1000)
        model = partition.recalibrate_bn(build_model("mlp_4x64", 2, seed=0), moons, 1000, device)
        tf = Tangent.from_model(model, device=device)
        x, _ = partition._points(moons, 1000, device)
        a, b = partition.segments(x, 32, 0.25, g)["train-train"]
        rows.append(compare_walks("mlp_4x64 (BN recalibrated on moons), 32 train-train segments", tf, a, b, 100_001))
    cifar = load_dataset(args.dataset, "test", root=args.data_root, limit=max(100, args.segments))
    for arch in ("cifar_resnet_8", "cifar_resnet_14", "cifar_resnet_20"):
        if not wanted(arch):
            continue
        tf, a, b = cifar_case(arch, cifar, device, args.segments, args.radius, g)
        rows.append(compare_walks(f"{arch} (BN recalibrated on 100 {args.dataset} test images), {args.segments} segments "
                                  f"of length {args.radius} from test images", tf, a, b, args.samples))
        rows[-1].update(compare_norms(arch, tf, a[0]))
    print("\n| case | breakpoints | walk (breakpoints/s) | plain walk | walk / plain | counts equal, max abs dt | "
          "gradient_norms vs former |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        norms = f"{r['norms_speedup']:.1f}x ({r['norms_error']:.0e})" if "norms_speedup" in r else "-"
        print(f"| {r['case'].split(' ')[0]} | {r['breakpoints']} | {r['walk_bps']:.0f} | {r['plain_bps']:.0f} | "
              f"**{r['speedup']:.1f}x** | {r['same']}, {r['dt']:.0e} | {norms} |")


if __name__ == "__main__":
    main()
