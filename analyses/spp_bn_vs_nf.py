"""Signal propagation plots at initialisation: BN-ReLU ResNet vs NF-ResNets (Brock, De, Smith 2021, Fig. 1-2).

Four deep CIFAR ResNets of the same layout, each at init, on one batch of unit Gaussian noise:

- `cifar_preact_resnet_N`, BN gamma 1 / beta 0, batch statistics: the paper's BN-ReLU ResNet (ResNetV2 order)
- `cifar_resnet_N` (OpenLTH, post-activation, the BN-only paper's net), gamma 1 / beta 0, batch statistics
- `nf_he_resnet_N`: NF-ResNet with plain He-init convs (no weight standardisation), skip gain 1
- `nf_resnet_N`: NF-ResNet with Scaled WS, skip gain 1 (the paper's init-time SPP; SkipInit's 0 would be flat)

Writes the stacked `signal` result (zarr) and the three-panel figure, then prints the numbers that decide
whether the paper's three qualitative shapes are reproduced (docs/science.md section 3):
BN-ReLU: variance grows linearly within a stage and resets at each transition (sawtooth);
NF He-init: the squared mean grows with depth (mean shift);
NF Scaled WS: squared mean ~0, residual variance ~1, variance + alpha^2 per block, reset to 1 + alpha^2.

    python analyses/spp_bn_vs_nf.py [--depth 110] [--batch 64] [--seed 0] [--border-resolution 96]
                                    [--out PATH.zarr] [--plot PATH.png] [--nf-plot PATH.png] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from rfprobe.models import build_model
from rfprobe.passes import signal
from rfprobe.plots import save_figure
from rfprobe.plots.signal import signal_figure
from rfprobe.results import save_result, stack

NETS = (  # label, architecture pattern, build options
    ("BN-ReLU (pre-act)", "cifar_preact_resnet_{depth}", {"bn_init": "fixed"}),
    ("BN post-act (OpenLTH)", "cifar_resnet_{depth}", {"bn_init": "fixed"}),
    ("NF, He init", "nf_he_resnet_{depth}", {"skip_init_gain": 1.0}),
    ("NF, Scaled WS", "nf_resnet_{depth}", {"skip_init_gain": 1.0}),
)


def measure_all(depth: int, batch: int, seed: int, device: str = "cpu"):
    results, labels = [], []
    for label, pattern, options in NETS:
        name = pattern.format(depth=depth)
        model = build_model(name, seed=seed, **options).to(device)
        x = signal.gaussian_input(model.rfprobe_input_shape, batch, seed).to(device)
        one = signal.run(model, x, batch_stats=True, seed=seed, command=sys.argv, init_seed=seed)
        one["build_options"] = ((), np.array(", ".join(f"{k}={v}" for k, v in options.items()), dtype=object))
        results.append(one)
        labels.append(label)
    return stack(results, labels)


def _stage_slices(one) -> list[np.ndarray]:
    """Block indices of each stage: from a stage's first block (the transition, or block 1) to its last."""
    starts = [1, *np.flatnonzero(one["transition"].values)]
    ends = [*starts[1:], one.sizes["block"]]
    return [np.arange(a, b) for a, b in zip(starts, ends)]


def report(ds) -> list[str]:
    """The numbers behind each qualitative shape, one line each."""
    lines = []
    for label in ds["checkpoint"].values:
        one = ds.sel(checkpoint=label)
        var, sq, res = (one[v].values for v in ("variance", "squared_mean", "residual_variance"))
        stages = _stage_slices(one)
        slopes = [np.polyfit(s, var[s], 1)[0] for s in stages]
        lines.append(
            f"{label}: variance stem {var[0]:.3f}; per stage first -> last "
            + ", ".join(f"{var[s[0]]:.3f} -> {var[s[-1]]:.3f}" for s in stages)
            + f"; slope/block {', '.join(f'{x:.4f}' for x in slopes)}; squared mean stem {sq[0]:.2e}, "
            + f"max {np.nanmax(sq):.3g}, last {sq[-1]:.3g}; residual variance mean {np.nanmean(res[1:]):.3f} "
            + f"(min {np.nanmin(res[1:]):.3f}, max {np.nanmax(res[1:]):.3f})")
        exp = one["expected_variance"].values
        if np.isfinite(exp).all():
            ratio = var / exp
            lines.append(f"  expected variance: stage ends {', '.join(f'{exp[s[-1]]:.3f}' for s in stages)}; "
                         f"measured / expected min {ratio.min():.3f}, max {ratio.max():.3f}; measured increase per "
                         f"block {np.mean(slopes):.4f} vs alpha^2 = 0.04")
    return lines


def border_check(depth: int, batch: int, seed: int, resolution: int, device: str = "cpu") -> str:
    """The Scaled-WS NF-ResNet on larger noise images (the nets are fully convolutional): zero padding
    lowers a 3x3 conv's output variance at border pixels, a smaller share of the positions at larger sizes."""
    model = build_model(f"nf_resnet_{depth}", seed=seed, skip_init_gain=1.0).to(device)
    x = signal.gaussian_input((3, resolution, resolution), batch, seed).to(device)
    one = signal.measure(model, x, batch_stats=True)
    ratio = one["variance"].values / one["expected_variance"].values
    res = one["residual_variance"].values[1:]
    return (f"NF, Scaled WS at {resolution}x{resolution} (batch {batch}): residual variance mean {res.mean():.3f} "
            f"(min {res.min():.3f}, max {res.max():.3f}); measured / expected min {ratio.min():.3f}, "
            f"max {ratio.max():.3f}; squared mean max {one['squared_mean'].values.max():.3g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--border-resolution", type=int, default=96,
                        help="also measure the Scaled-WS net on noise of this size (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("results/analyses/spp_bn_vs_nf.zarr"))
    parser.add_argument("--plot", type=Path, default=Path("docs/figures/spp_bn_vs_nf.png"), help="all four nets")
    parser.add_argument("--nf-plot", type=Path, default=Path("docs/figures/spp_nf.png"), help="the two NF nets")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ds = measure_all(args.depth, args.batch, args.seed, args.device)
    save_result(ds, args.out, overwrite=args.overwrite)
    save_figure(signal_figure(ds, title=f"SPPs at init, depth {args.depth}"), args.plot, overwrite=args.overwrite, dpi=72)
    nf = [label for label, pattern, _ in NETS if pattern.startswith("nf_")]
    save_figure(signal_figure(ds.sel(checkpoint=nf), title=f"NF-ResNets at init, depth {args.depth}"), args.nf_plot,
                overwrite=args.overwrite, dpi=72)
    print("\n".join(report(ds)))
    if args.border_resolution:
        print(border_check(args.depth, max(2, args.batch // 4), args.seed, args.border_resolution, args.device))
    print(f"result: {args.out}\nplots: {args.plot}, {args.nf_plot}")


if __name__ == "__main__":
    main()
