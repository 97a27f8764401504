"""BN as "smart initialisation" (Balestriero & Baraniuk 2022; docs/science.md section 2), on random weights.

The experiment (defined here; the paper's own figures could not be read):

- MLPs on 2-D toy data (moons, 1000 training points): `mlp_DxW` for (D, W) in MODELS, random weights
  (kaiming-normal; BN gamma ~ U[0, 1], beta = 0), under three conditions:
  `nobn`   the same architecture without BN (`mlp_DxW_nobn`: Linear with PyTorch's default biases),
  `bn-init` BN with its initial statistics (mean 0, var 1: BN only scales by gamma),
  `bn-data` the same weights with BN statistics recomputed exactly on the data (`recalibrate_bn`).
- a random `cifar_resnet_8_4` on 1000 CIFAR-10 training images (BN statistics from them), conditions
  `bn-init` and `bn-data` (the CNN has no BN-free twin here; `bn-init` is its un-normalised version).

Measured "near" the data (test points) and "away" from it (MLP: uniform points of a wide box at least
FAR_GAP from every data point; CNN: N(0, I) images of the normalised input space), exactly:
breakpoints per unit length along segments of length RADIUS in random directions, and the distance to the
nearest region boundary (exact for the MLPs, Hutchinson with 32 probes for the CNN); region counts of the
2-D partition in the data's box and in an equally large box away from it; and the BN mini-batch jitter of
boundary offsets against sigma / (sqrt(B) ||w||).

Writes results/partition_smart_init/{mlp,cnn}.zarr and docs/figures/partition_smart_init_*.png.
Run: `nice -n 10 .venv/bin/python analyses/partition_smart_init.py` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from rfprobe.data import load_dataset
from rfprobe.geometry import Tangent, gradient_norms, hutchinson_norms, nearest, slice_partition, walk
from rfprobe.models import build_model
from rfprobe.passes import partition
from rfprobe.plots import save_figure
from rfprobe.plots.partition import draw_slice
from rfprobe.results import provenance, save_result, stack

MODELS = ((4, 64), (8, 64), (4, 256))
SEEDS = (0, 1)
MLP_CONDITIONS = ("nobn", "bn-init", "bn-data")
CNN_CONDITIONS = ("bn-init", "bn-data")
WHERE = ("near", "away")
RADIUS = {"mlp": 0.25, "cnn": 1.0}
FAR_GAP = 1.5
JITTER_BATCHES = (16, 128)
BOX_SIDE = 0.1
BOXES = 4
SLICE_MODEL = (3, 16)


def far_points(data_x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` points uniform in a box 3x the data's extent, each at least FAR_GAP from every data point."""
    lo, hi = data_x.min(0).values, data_x.max(0).values
    centre, half = (lo + hi) / 2, 1.5 * (hi - lo)
    found = []
    while sum(len(f) for f in found) < n:
        candidates = centre + half * (2 * torch.rand((4 * n, 2), generator=generator, dtype=torch.float64) - 1)
        found.append(candidates[torch.cdist(candidates, data_x).min(1).values > FAR_GAP])
    return torch.cat(found)[:n]


def density(tf: Tangent, points: torch.Tensor, radius: float, generator: torch.Generator) -> float:
    """Breakpoints per unit length along segments of length `radius` in random directions from `points`."""
    direction = torch.randn(points.shape, generator=generator, dtype=torch.float64)
    direction /= direction.flatten(1).norm(dim=1).view(-1, *([1] * (points.ndim - 1)))
    found = walk(tf, points, points + radius * direction)
    return float(found.counts.sum() / found.length.sum())


def distances(tf: Tangent, points: torch.Tensor, probes: int | None, generator) -> np.ndarray:
    """Nearest-boundary distance per point: exact (probes None) or Hutchinson."""
    if probes is None:
        z, g = gradient_norms(tf, points)
    else:
        z, g = hutchinson_norms(tf, points, probes, generator, batch=tf.rows(probes))
    return np.array([nearest(tf, z[i], g[i]).distance for i in range(points.shape[0])])


def mlp_models(depth: int, width: int, seed: int, data) -> dict:
    bn = build_model(f"mlp_{depth}x{width}", 2, seed=seed)
    return {"nobn": build_model(f"mlp_{depth}x{width}_nobn", 2, seed=seed), "bn-init": bn,
            "bn-data": partition.recalibrate_bn(bn, data, batch_size=1000)}


def jitter_ratios(model, tf, data, generator) -> np.ndarray:
    """Per B: the median over units of (offset std over batches) / (sigma / (sqrt(B) ||w||)) in the first
    layer, and the median of the per-layer medians of the deeper layers."""
    out = []
    for b in JITTER_BATCHES:
        ratio = partition.jitter(model, tf, data, 24, b, "cpu", generator)["jitter_ratio"][1]
        out.append([ratio[0], np.nanmedian(ratio[1:])])
    return np.array(out)


def box_regions(tf: Tangent, centres: torch.Tensor) -> tuple[float, int]:
    """Mean exact region count of BOX_SIDE x BOX_SIDE boxes centred at `centres`, and whether all completed."""
    counts, complete = [], True
    for c in centres.tolist():
        box = (c[0] - BOX_SIDE / 2, c[0] + BOX_SIDE / 2, c[1] - BOX_SIDE / 2, c[1] + BOX_SIDE / 2)
        found = slice_partition(tf, torch.zeros(2), torch.eye(2), box, max_regions=20000, batch=256)
        counts.append(len(found.polygons))
        complete &= found.complete
    return float(np.mean(counts)), int(complete)


def run_mlp(quick: bool) -> tuple[xr.Dataset, dict]:
    train = load_dataset("toy2d:moons", "train", n=1000)
    test = load_dataset("toy2d:moons", "test", n=1000)
    generator = torch.Generator().manual_seed(0)
    n_points = 60 if quick else 200
    near = test.x[:n_points].double()
    away = far_points(train.x.double(), n_points, generator)
    models = MODELS[:1] if quick else MODELS
    seeds = SEEDS[:1] if quick else SEEDS
    shape = (len(models), len(seeds), len(MLP_CONDITIONS))
    dens = np.full((*shape, 2), np.nan)
    dist_median = np.full((*shape, 2), np.nan)
    regions = np.full((*shape, 2), np.nan)
    complete = np.zeros((*shape, 2), dtype=np.int64)
    jitter = np.full((*shape, len(JITTER_BATCHES), 2), np.nan)
    dist_all = np.full((*shape, 2, n_points), np.nan)
    slices = {}
    for i, (depth, width) in enumerate(models):
        for j, seed in enumerate(seeds):
            for k, (condition, model) in enumerate(mlp_models(depth, width, seed, train).items()):
                t0 = time.time()
                tf = Tangent.from_model(model)
                for w, points in enumerate((near, away)):
                    dens[i, j, k, w] = density(tf, points, RADIUS["mlp"], generator)
                    dist_all[i, j, k, w] = distances(tf, points, None, generator)
                    dist_median[i, j, k, w] = np.median(dist_all[i, j, k, w])
                    regions[i, j, k, w], complete[i, j, k, w] = box_regions(tf, points[:BOXES])
                if condition == "bn-data":
                    jitter[i, j, k] = jitter_ratios(model, tf, train, generator)
                print(f"mlp_{depth}x{width} seed {seed} {condition}: density near/away {dens[i, j, k, 0]:.2f}/"
                      f"{dens[i, j, k, 1]:.2f}, regions {regions[i, j, k, 0]:.0f}/{regions[i, j, k, 1]:.0f}, "
                      f"{time.time() - t0:.0f}s", flush=True)
    depth, width = SLICE_MODEL
    for condition, model in mlp_models(depth, width, 0, train).items():
        slices[condition] = partition.run(
            model, train, segments_per_kind=0, exact_points=0, probes=0, lc_points=0, jitter_batches=0,
            slice_resolution=300, slice_max_regions=20000, batch_size=1000, command=sys.argv)
    ds = xr.Dataset(
        {"breakpoint_density": (("model", "seed", "condition", "where"), dens),
         "distance_median": (("model", "seed", "condition", "where"), dist_median),
         "distance": (("model", "seed", "condition", "where", "point"), dist_all),
         "box_regions": (("model", "seed", "condition", "where"), regions),
         "box_complete": (("model", "seed", "condition", "where"), complete),
         "jitter_ratio": (("model", "seed", "condition", "batch_size", "jitter_layers"), jitter)},
        coords={"model": np.array([f"mlp_{d}x{w}" for d, w in models], dtype=object), "seed": list(seeds),
                "condition": np.array(MLP_CONDITIONS, dtype=object), "where": np.array(WHERE, dtype=object),
                "batch_size": list(JITTER_BATCHES), "jitter_layers": np.array(["first", "deeper"], dtype=object)})
    ds.attrs = provenance("partition_smart_init", None, dataset="toy2d:moons", split="train+test", n_examples=1000,
                          radius=RADIUS["mlp"], far_gap=FAR_GAP, box_side=BOX_SIDE, boxes=BOXES,
                          box_definition=f"mean exact region count of {BOX_SIDE}-side boxes centred at the first {BOXES} near/away points",
                          jitter_definition="median over units of offset std / (sigma / (sqrt(B) ||w||)), 24 batches; "
                                            "first layer, and median over deeper layers of their medians",
                          distance_definition="exact min_k |z_k| / ||grad z_k||",
                          near_definition="test points", away_definition=f"uniform in 3x the data box, > {FAR_GAP} from data")
    return ds, slices


def run_cnn(root: Path, quick: bool) -> xr.Dataset:
    train = load_dataset("cifar10", "train", root=root, limit=300 if quick else 1000)
    test = load_dataset("cifar10", "test", root=root, limit=64)
    generator = torch.Generator().manual_seed(0)
    n_points = 8 if quick else 32
    near, _ = partition._points(test.subset(n_points), 64, "cpu")
    away = torch.randn(near.shape, generator=generator, dtype=torch.float64)
    seeds = SEEDS[:1] if quick else SEEDS
    dens = np.full((len(seeds), len(CNN_CONDITIONS), 2), np.nan)
    dist_median = np.full((len(seeds), len(CNN_CONDITIONS), 2), np.nan)
    lc = np.full((len(seeds), len(CNN_CONDITIONS), 2), np.nan)
    jitter = np.full((len(seeds), len(CNN_CONDITIONS)), np.nan)
    for j, seed in enumerate(seeds):
        model = build_model("cifar_resnet_8_4", seed=seed)
        for k, condition in enumerate(CNN_CONDITIONS):
            t0 = time.time()
            net = partition.recalibrate_bn(model, train, 250) if condition == "bn-data" else model
            tf = Tangent.from_model(net)
            for w, points in enumerate((near, away)):
                dens[j, k, w] = density(tf, points, RADIUS["cnn"], generator)
                dist_median[j, k, w] = np.median(distances(tf, points, 32, generator))
                lc[j, k, w] = partition.local_complexity(tf, points[:8], generator)[0].mean()
            if condition == "bn-data":
                jitter[j, k] = np.nanmedian(partition.jitter(net, tf, train, 16, 32, "cpu", generator)["jitter_ratio"][1])
            print(f"cifar_resnet_8_4 seed {seed} {condition}: density near/away {dens[j, k, 0]:.2f}/{dens[j, k, 1]:.2f}, "
                  f"distance {dist_median[j, k, 0]:.3g}/{dist_median[j, k, 1]:.3g}, {time.time() - t0:.0f}s", flush=True)
    ds = xr.Dataset(
        {"breakpoint_density": (("seed", "condition", "where"), dens),
         "distance_median": (("seed", "condition", "where"), dist_median),
         "local_complexity": (("seed", "condition", "where"), lc),
         "jitter_ratio": (("seed", "condition"), jitter)},
        coords={"seed": list(seeds), "condition": np.array(CNN_CONDITIONS, dtype=object),
                "where": np.array(WHERE, dtype=object)})
    ds.attrs = provenance("partition_smart_init", None, dataset="cifar10", split="train+test",
                          n_examples=len(train), arch="cifar_resnet_8_4", radius=RADIUS["cnn"],
                          distance_definition="Hutchinson, 32 probes", near_definition="test images",
                          away_definition="N(0, I) images in the normalised input space", jitter_batch_size=32)
    return ds


def figures(mlp: xr.Dataset, slices: dict, cnn: xr.Dataset | None, where: Path, overwrite: bool) -> list[Path]:
    written = []
    labels = list(slices)
    stacked = stack([slices[c] for c in labels], labels)
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.2))
    for ax, label in zip(axes, labels):
        draw_slice(ax, stacked, label, f"mlp_{SLICE_MODEL[0]}x{SLICE_MODEL[1]}, {label}: "
                                       f"{int(stacked['slice_regions'].sel(checkpoint=label))} regions")
    fig.suptitle("random-weight MLP on moons: the exact partition of the input plane", fontsize=10)
    written.append(save_figure(fig, where / "partition_smart_init_slices.png", overwrite=overwrite, dpi=70))

    fig, axes = plt.subplots(1, 3 if cnn is not None else 2, figsize=(15 if cnn is not None else 10, 4))
    for ax, var, ylabel in ((axes[0], "breakpoint_density", "breakpoints per unit length"),
                            (axes[1], "distance_median", "median distance to the nearest boundary")):
        mean = mlp[var].mean("seed")
        x = np.arange(mlp.sizes["model"])
        width = 0.8 / (2 * mlp.sizes["condition"])
        for c, condition in enumerate(mlp["condition"].values):
            for w, place in enumerate(WHERE):
                ax.bar(x + (2 * c + w) * width, mean.sel(condition=condition, where=place), width,
                       color=plt.get_cmap("tab10")(c), alpha=1.0 if place == "near" else 0.45,
                       label=f"{condition}, {place}")
        ax.set_xticks(x + 0.4 - width / 2, mlp["model"].values)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    axes[0].set_title("MLPs on moons: near the data (solid) vs away (pale)", fontsize=9)
    if cnn is not None:
        ax = axes[2]
        mean = cnn["breakpoint_density"].mean("seed")
        for c, condition in enumerate(cnn["condition"].values):
            ax.bar(np.arange(2) + c * 0.4, mean.sel(condition=condition).values, 0.4, label=condition)
        ax.set_xticks(np.arange(2) + 0.2, WHERE)
        ax.set_yscale("log")
        ax.set_ylabel("breakpoints per unit length")
        ax.set_title("random cifar_resnet_8_4: test images vs noise", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(save_figure(fig, where / "partition_smart_init_density.png", overwrite=overwrite, dpi=90))

    fig, ax = plt.subplots(figsize=(6, 4))
    first = mlp.isel(model=0, seed=0)
    for c, condition in enumerate(mlp["condition"].values):
        for w, place in enumerate(WHERE):
            values = np.log10(first["distance"].sel(condition=condition, where=place).values)
            ax.hist(values, bins=30, histtype="step", color=plt.get_cmap("tab10")(c), ls="-" if place == "near" else "--",
                    label=f"{condition}, {place}")
    ax.set_xlabel(f"log10 exact distance to the nearest boundary ({mlp['model'].values[0]}, seed 0)")
    ax.legend(fontsize=7)
    written.append(save_figure(fig, where / "partition_smart_init_distances.png", overwrite=overwrite, dpi=90))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/partition_smart_init"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data/cifar10"))
    parser.add_argument("--no-cnn", action="store_true", help="skip the CIFAR-10 part")
    parser.add_argument("--quick", action="store_true", help="one model, one seed, fewer points (a smoke run)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mlp, slices = run_mlp(args.quick)
    save_result(mlp, args.out / "mlp.zarr", overwrite=args.overwrite)
    cnn = None
    if not args.no_cnn:
        cnn = run_cnn(args.data_root, args.quick)
        save_result(cnn, args.out / "cnn.zarr", overwrite=args.overwrite)
    for path in figures(mlp, slices, cnn, args.figures, args.overwrite):
        print(f"figure: {path}")
    for ds in (mlp, cnn):
        for var in ("breakpoint_density", "distance_median", "box_regions", "local_complexity", "jitter_ratio"):
            if ds is not None and var in ds:
                table = ds[var].mean("seed").to_series()
                if table.index.nlevels > 1:
                    table = table.unstack()
                print(f"\n{var} (mean over seeds)\n{table.to_string()}")


if __name__ == "__main__":
    main()
