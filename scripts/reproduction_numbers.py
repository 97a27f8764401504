"""Every number of docs/reproduction.md, as markdown tables, from the studies the sweeps wrote:

    python scripts/reproduction_numbers.py sweeps/bn_only_cpu [--wd sweeps/bn_only_cpu_wd-study]

Accuracy is the trainer's (full test split, recorded in each checkpoint); the pass numbers are the study's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rfprobe.study import as_result, last_checkpoints, open_study, records


def pct(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def trainable_counts(arch: str) -> dict[str, int]:
    """Trainable parameters per mode of `arch` (rfprobe.trainable's selection, random k=2)."""
    import torch

    from rfprobe.models import build_model
    from rfprobe.trainable import select

    model = build_model(arch, 10, seed=0)
    out = {}
    for mode in ("all", "bn", "bn+output", "random", "output", "none"):
        plan = select(model, mode, k=2, generator=torch.Generator().manual_seed(0))
        out[mode] = plan.count(model)
    return out


def by_role(dead, label: str) -> dict[str, dict[float, float]]:
    """role -> threshold -> fraction of that role's BN channels with |gamma| < threshold."""
    one = dead.sel(checkpoint=label)
    valid = np.isfinite(np.asarray(one["n_channels"].values, float))
    roles = one["role"].values[valid]
    channels = np.asarray(one["n_channels"].values, float)[valid]
    out = {}
    for role in ("relu", "residual", "shortcut"):
        where = roles == role
        if where.any():
            out[role] = {float(t): float(one["n_dead"].sel(threshold=t).values[valid][where].sum() / channels[where].sum())
                         for t in one["threshold"].values}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--wd", type=Path, help="the weight-decay study directory")
    args = parser.parse_args()
    tree = open_study(args.study).load()
    recs = records(args.study)
    dead = as_result(tree["dead"].to_dataset())
    finals = last_checkpoints(dead)

    print("## Accuracy after training (the trainer's test accuracy on its whole test split)\n")
    print("| run | arch | mode | epoch | trainable params | test accuracy |\n| --- | --- | --- | --- | --- | --- |")
    counts = {}
    for run, label in finals.items():
        r = recs[label]
        counts.setdefault(r["arch"], trainable_counts(r["arch"]))
        print(f"| {run} | {r['arch']} | {r['mode']} | {r['epoch']} | {counts[r['arch']][r['mode']]:,} | "
              f"{pct(r['metrics'].get('test_acc'))} |")

    thresholds = [float(t) for t in dead["threshold"].values]
    print("\n## Small-|gamma| fraction, all BN channels pooled (latest epoch)\n")
    print("| run | " + " | ".join(f"< {t:g}" for t in thresholds) + " |\n|" + " --- |" * (len(thresholds) + 1))
    for run, label in finals.items():
        values = dead["pooled_frac_dead"].sel(checkpoint=label, pool="all").values
        print(f"| {run} | " + " | ".join(pct(v) for v in values) + " |")
    print("\n## Small-|gamma| fraction per BN role (latest epoch)\n")
    print("| run | role | " + " | ".join(f"< {t:g}" for t in thresholds) + " |\n|" + " --- |" * (len(thresholds) + 2))
    for run, label in finals.items():
        if recs[label]["mode"] in ("bn", "all"):
            for role, values in by_role(dead, label).items():
                print(f"| {run} | {role} | " + " | ".join(pct(values[t]) for t in thresholds) + " |")
    print("\n## Along training (small-|gamma| fraction, all BNs)\n")
    print("| run | epoch | " + " | ".join(f"< {t:g}" for t in thresholds) + " | test accuracy |\n|" + " --- |" * (len(thresholds) + 3))
    for label in dead["checkpoint"].values:
        r = recs[str(label)]
        if r["mode"] in ("bn", "all"):
            values = dead["pooled_frac_dead"].sel(checkpoint=label, pool="all").values
            print(f"| {r['run']} | {r['epoch']} | " + " | ".join(pct(v) for v in values) + f" | {pct(r['metrics'].get('test_acc'))} |")

    if "sparsity" in tree.children:
        sp = as_result(tree["sparsity"].to_dataset())
        print(f"\n## Dead ReLU channels and small |gamma| (sparsity, {sp.attrs['n_examples']} test images)\n")
        print("| run | dead channels | of them at BN sites | abs(gamma) < 0.01 | dead and abs(gamma) < 0.01 | zero fraction |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for run, label in finals.items():
            one = sp.sel(checkpoint=label)
            t = one["threshold"].values[np.argmin(np.abs(one["threshold"].values - 0.01))]
            print(f"| {run} | {int(one['pooled_dead_count'])} | {int(one['bn_dead_count'])} | "
                  f"{int(one['pooled_small_gamma_count'].sel(threshold=t))} | "
                  f"{int(one['pooled_dead_small_gamma_count'].sel(threshold=t))} | {pct(float(one['pooled_zero_fraction']))} |")
    if "ablate" in tree.children:
        ab = as_result(tree["ablate"].to_dataset())
        print(f"\n## Pruning |gamma| < {ab.attrs['prune_below']} ({ab.attrs['prune_operation']}; {ab.attrs['n_examples']} "
              "test images; random: mean ± std over draws)\n")
        print("| run | pruned channels | baseline | pruned | random, same count | largest abs(gamma) | re-enabled |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
        for run, label in finals.items():
            one = ab.sel(checkpoint=label)
            acc = one["accuracy"]
            rnd = acc.sel(variant="random")
            cells = [pct(float(acc.sel(variant=v).mean("draw"))) for v in ("baseline", "pruned")]
            cells.append(f"{pct(float(rnd.mean('draw')))} ± {100 * float(rnd.std('draw')):.2f}")
            cells += [pct(float(acc.sel(variant=v).mean("draw"))) if v in one["variant"].values else "-"
                      for v in ("largest", "reenabled")]
            print(f"| {run} | {int(one['n_changed'].sel(variant='pruned'))} of {int(one['n_eligible'])} | " + " | ".join(cells) + " |")
        print("\n### Pruning curve (latest epoch; accuracy, smallest |gamma| / random)\n")
        fractions = [float(f) for f in ab["fraction"].values]
        print("| run | " + " | ".join(f"{f:g}" for f in fractions) + " |\n|" + " --- |" * (len(fractions) + 1))
        for run, label in finals.items():
            if recs[label]["mode"] in ("bn", "all"):
                curve = ab["curve_accuracy"].sel(checkpoint=label).mean("draw")
                print(f"| {run} | " + " | ".join(f"{pct(float(curve.sel(curve='smallest', fraction=f)))} / "
                                                 f"{pct(float(curve.sel(curve='random', fraction=f)))}" for f in fractions) + " |")

    if args.wd is not None:
        wd_tree = open_study(args.wd).load()
        wd_recs = records(args.wd)
        wd_dead = as_result(wd_tree["dead"].to_dataset())
        print("\n## Weight decay and gamma (ResNet-14, bn)\n")
        print("| weight decay | epoch | " + " | ".join(f"< {t:g}" for t in thresholds) + " | mean abs(gamma) | test accuracy |\n|"
              + " --- |" * (len(thresholds) + 4))
        affine = as_result(wd_tree["affine"].to_dataset()) if "affine" in wd_tree.children else None
        for label in wd_dead["checkpoint"].values:
            r = wd_recs[str(label)]
            wd = next((line.split("=")[1].strip() for line in Path(r["path"]).with_name("config.toml").read_text().splitlines()
                       if line.startswith("weight_decay")), "?")
            values = wd_dead["pooled_frac_dead"].sel(checkpoint=label, pool="all").values
            mean_abs = "-"
            if affine is not None:
                gamma = affine["gamma"].sel(checkpoint=label).values
                mean_abs = f"{np.nanmean(np.abs(gamma)):.4f}"
            print(f"| {wd} | {r['epoch']} | " + " | ".join(pct(v) for v in values) + f" | {mean_abs} | {pct(r['metrics'].get('test_acc'))} |")


if __name__ == "__main__":
    main()
