"""Every number of docs/reproduction.md: read from the sweeps' studies into one machine-readable file, and the
doc's tables rendered from that file alone.

    python scripts/reproduction_numbers.py collect sweeps/bn_only_cpu --wd sweeps/bn_only_cpu_wd \\
        --schedule sweeps/bn_only_cpu_schedule --drift avx2=sweeps/drift/avx2 --drift nchw=sweeps/drift/nchw \\
        --out docs/reproduction_numbers.json
    python scripts/reproduction_numbers.py tables docs/reproduction_numbers.json     # the doc's tables

`collect` keeps one record per checkpoint (counts, not percentages: every fraction is a whole count of its
channel pool) and, per drift variant, the same seed's run on another numerical path; `tables` groups runs that
differ only in seed and prints mean ± sd (sample sd, n - 1) over seeds. tests/test_reproduction_numbers.py
checks that the doc's tables are exactly what `tables` renders from the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

THRESHOLDS = (0.001, 0.01, 0.05, 0.1)
ROLES = ("relu", "residual", "shortcut")
SHORT = {"cifar_resnet_14": "R-14", "cifar_resnet_32": "R-32"}
FORMAT = 1


# ---------------------------------------------------------------------------------------------------- collect

def trainable_counts(arch: str) -> dict[str, int]:
    """Trainable parameters per mode of `arch` (rfprobe.trainable's selection, random k=2)."""
    import torch

    from rfprobe.models import build_model
    from rfprobe.trainable import select

    model = build_model(arch, 10, seed=0)
    return {mode: select(model, mode, k=2, generator=torch.Generator().manual_seed(0)).count(model)
            for mode in ("all", "bn", "bn+output", "random", "output", "none")}


def _threshold_index(values, t: float) -> int:
    from rfprobe.study.groups import index_of

    return index_of(values, float(t))


def collect_study(directory: Path, study: str) -> list[dict]:
    """One record per checkpoint of the study in `directory`: its coordinates, the trainer's test accuracy,
    BN channel counts below each threshold (all BNs pooled and per role), mean |gamma|, and where the pass ran
    on it the sparsity pass's dead ReLU counts and the ablate pass's accuracies."""
    from rfprobe.study import as_result, open_study, records

    tree = open_study(directory).load()
    recs = records(directory)
    dead = as_result(tree["dead"].to_dataset())
    groups = {name: as_result(tree[name].to_dataset()) for name in ("sparsity", "ablate", "affine") if name in tree.children}
    out = []
    for label in (str(c) for c in dead["checkpoint"].values):
        r = recs[label]
        one = dead.sel(checkpoint=label)
        thresholds = one["threshold"].values
        row = {"study": study, "label": label, "run": r["run"], "arch": r["arch"], "mode": r["mode"],
               "seed": int(r["seed"]), "epoch": int(r["epoch"]), **{k: v for k, v in r.get("extra", {}).items()},
               "test_acc": r["metrics"].get("test_acc"), "sha256": r["sha256"]}
        row["bn_channels"] = int(one["pooled_n_channels"].sel(pool="all"))
        row["small_gamma"] = {f"{t:g}": int(one["pooled_n_dead"].sel(pool="all").values[_threshold_index(thresholds, t)])
                              for t in THRESHOLDS}
        valid = np.isfinite(np.asarray(one["n_channels"].values, float))
        roles, channels = one["role"].values[valid], np.asarray(one["n_channels"].values, float)[valid]
        row["roles"] = {}
        for role in ROLES:
            where = roles == role
            if where.any():
                n_dead = np.asarray(one["n_dead"].values, float)[valid][where]
                row["roles"][role] = {"channels": int(channels[where].sum()),
                                      **{f"{t:g}": int(n_dead[:, _threshold_index(thresholds, t)].sum()) for t in THRESHOLDS}}
        if "affine" in groups and label in groups["affine"]["checkpoint"].values:
            gamma = np.asarray(groups["affine"]["gamma"].sel(checkpoint=label).values, float)
            row["mean_abs_gamma"] = float(np.nanmean(np.abs(gamma)))
        if "sparsity" in groups and label in groups["sparsity"]["checkpoint"].values:
            sp = groups["sparsity"].sel(checkpoint=label)
            at = _threshold_index(sp["threshold"].values, 0.01)
            row["sparsity"] = {"examples": int(groups["sparsity"].attrs["n_examples"]),
                               "relu_channels": int(np.nansum(np.asarray(sp["n_channels"].values, float))),
                               "dead": int(sp["pooled_dead_count"]), "dead_at_bn": int(sp["bn_dead_count"]),
                               "small_gamma": int(sp["pooled_small_gamma_count"].values[at]),
                               "dead_and_small_gamma": int(sp["pooled_dead_small_gamma_count"].values[at]),
                               "zero_fraction": float(sp["pooled_zero_fraction"]), "accuracy": float(sp["accuracy"])}
        if "ablate" in groups and label in groups["ablate"]["checkpoint"].values:
            ab = groups["ablate"].sel(checkpoint=label)
            acc = ab["accuracy"]
            row["ablate"] = {
                "examples": int(groups["ablate"].attrs["n_examples"]), "prune_below": float(groups["ablate"].attrs["prune_below"]),
                "pruned_channels": int(ab["n_changed"].sel(variant="pruned")), "eligible": int(ab["n_eligible"]),
                **{v: float(acc.sel(variant=v).mean("draw")) for v in ("baseline", "pruned", "largest", "reenabled")
                   if v in ab["variant"].values},
                "random_draws": [float(x) for x in acc.sel(variant="random").values],
                "curve": {str(c): {f"{float(f):g}": float(ab["curve_accuracy"].sel(curve=c, fraction=f).mean("draw"))
                                   for f in ab["fraction"].values} for c in ab["curve"].values}}
        out.append(row)
    return out


def collect_drift(name: str, run: Path, reference: dict) -> dict:
    """The run `run` (the reference run's config on another numerical path) against `reference`'s final
    checkpoint record: test accuracy, BN channel counts below each threshold, and the largest |gamma|
    difference from the reference's final.pt."""
    import torch

    from rfprobe.checkpoint import load_checkpoint

    mine, theirs = load_checkpoint(run / "final.pt"), load_checkpoint(Path(reference["path"]))

    def gammas(model):
        return torch.cat([m.weight.detach().flatten() for m in model.modules()
                          if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)])

    values, ref = gammas(mine.model), gammas(theirs.model)
    diff = float((values - ref).abs().max())
    counts = {f"{t:g}": int((values.abs() < t).sum()) for t in THRESHOLDS}
    return {"variant": name, "path": str(run / "final.pt"), "test_acc": mine.metrics.get("test_acc"),
            "small_gamma": counts, "bn_channels": int(values.numel()), "max_abs_gamma_diff": diff,
            "reference": reference["label"]}


def collect(args) -> dict:
    records = collect_study(args.main, "main")
    for directory, study in ((args.wd, "weight_decay"), (args.schedule, "schedule")):
        if directory is not None:
            records += collect_study(directory, study)
    from rfprobe.study import records as study_records

    main_records = study_records(args.main)
    drift = []
    for spec in args.drift:
        name, _, path = spec.partition("=")
        reference = next(r for r in main_records.values() if r["arch"] == "cifar_resnet_14" and r["mode"] == "bn"
                         and r["seed"] == 0 and r["epoch"] == 3)
        drift.append(collect_drift(name, Path(path), reference))
    archs = sorted({r["arch"] for r in records})
    return {"format": FORMAT, "thresholds": list(THRESHOLDS), "trainable": {a: trainable_counts(a) for a in archs},
            "checkpoints": records, "drift": drift}


# ------------------------------------------------------------------------------------------------------ tables

def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample sd (NaN for one value) and count of the finite values (rfprobe.study.groups.Summary)."""
    from rfprobe.study.groups import Summary

    s = Summary.of([x for x in values if x is not None])
    return s.mean, s.sd, s.n


def cell(values, scale: float = 100.0, digits: int = 2, unit: str = "%") -> str:
    """mean ± sd over the values (sample sd), `36.78 ± 0.52%`; one value alone as it is; `-` for none."""
    mean, sd, n = mean_sd(values)
    if n == 0:
        return "-"
    if n == 1:
        return f"{scale * mean:.{digits}f}{unit}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}{unit}"


def name(r: dict) -> str:
    return f"{SHORT.get(r['arch'], r['arch'])} {r['mode']}"


def groups(rows: list[dict], *keys) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def latest(rows: list[dict]) -> list[dict]:
    """Each run's latest checkpoint."""
    last: dict[str, dict] = {}
    for r in rows:
        if r["run"] not in last or r["epoch"] > last[r["run"]]["epoch"]:
            last[r["run"]] = r
    return list(last.values())


def frac(r: dict, t: str) -> float:
    return r["small_gamma"][t] / r["bn_channels"]


def table(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(row) + " |" for row in body])


def spread_verdict(a: list[float], b: list[float]) -> str:
    """`agrees` when the means differ by more than the two groups' sd added (their ±1 sd ranges do not
    overlap), else `within the spread`; one run per side cannot say."""
    (ma, sa, na), (mb, sb, nb) = mean_sd(a), mean_sd(b)
    if na < 2 or nb < 2:
        return "one seed: no spread"
    return "agrees" if abs(ma - mb) > sa + sb else "within the spread"


def render(numbers: dict) -> dict[str, str]:
    """title -> markdown table, every table of docs/reproduction.md, from the numbers file alone."""
    ts = [f"{t:g}" for t in numbers["thresholds"]]
    rows = numbers["checkpoints"]
    main = [r for r in rows if r["study"] == "main"]
    finals = latest(main)
    by_group = groups(finals, "arch", "mode")
    out = {}
    trainable = numbers["trainable"]

    body = []
    for (arch, mode), members in by_group.items():
        members = sorted(members, key=lambda r: r["seed"])
        body.append([name(members[0]), str(members[0]["epoch"]), f"{trainable[arch][mode]:,}", str(len(members)),
                     cell([r["test_acc"] for r in members]),
                     ", ".join(f"{100 * r['test_acc']:.2f}" for r in members)])
    out["Accuracy after training"] = table(["group", "epochs", "trainable params", "seeds", "test accuracy",
                                            "per seed (%)"], body)

    body = [[name(m[0]), str(len(m))] + [cell([frac(r, t) for r in m]) for t in ts] for m in by_group.values()]
    out["Small-|gamma| fraction, all BN channels pooled"] = table(["group", "seeds"] + [f"< {t}" for t in ts], body)

    body = []
    for m in by_group.values():
        if m[0]["mode"] in ("bn", "all"):
            for role in ROLES:
                if role in m[0]["roles"]:
                    body.append([name(m[0]), role, str(m[0]["roles"][role]["channels"])] +
                                [cell([r["roles"][role][t] / r["roles"][role]["channels"] for r in m]) for t in ts])
    out["Small-|gamma| fraction per BN role"] = table(["group", "role", "channels"] + [f"< {t}" for t in ts], body)

    body = []
    for (arch, mode, epoch), m in groups([r for r in main if r["mode"] in ("bn", "all")], "arch", "mode", "epoch").items():
        body.append([name(m[0]), str(epoch), str(len(m))] + [cell([frac(r, t) for r in m]) for t in ts[1:4:2]] +
                    [cell([r["test_acc"] for r in m])])
    out["Along training"] = table(["group", "epoch", "seeds"] + [f"< {t}" for t in ts[1:4:2]] + ["test accuracy"], body)

    body = []
    for r in sorted(finals, key=lambda r: (r["arch"], r["mode"], r["seed"])):
        if r["mode"] in ("bn", "all", "random", "none"):
            sp = r.get("sparsity", {})
            body.append([name(r), str(r["seed"]), f"{100 * r['test_acc']:.2f}%",
                         f"{r['small_gamma']['0.01']} / {r['bn_channels']}", f"{r['small_gamma']['0.1']} / {r['bn_channels']}",
                         str(sp.get("dead", "-"))])
    out["Per seed"] = table(["run", "seed", "test accuracy", "abs(gamma) < 0.01", "abs(gamma) < 0.1", "dead ReLU channels"], body)

    withsp = [m for m in by_group.values() if all("sparsity" in r for r in m)]
    if withsp:
        n_examples = withsp[0][0]["sparsity"]["examples"]
        body = [[name(m[0]), str(len(m)), str(m[0]["sparsity"]["relu_channels"])] +
                [cell([r["sparsity"][k] for r in m], scale=1, digits=1, unit="")
                 for k in ("dead", "dead_at_bn", "small_gamma", "dead_and_small_gamma")] +
                [cell([r["sparsity"]["zero_fraction"] for r in m])] for m in withsp]
        out[f"Dead ReLU channels and small |gamma| (sparsity, {n_examples} test images)"] = table(
            ["group", "seeds", "ReLU channels", "dead channels", "of them at BN sites", "abs(gamma) < 0.01",
             "dead and abs(gamma) < 0.01", "zero fraction"], body)

    withab = [m for m in by_group.values() if all("ablate" in r for r in m)]
    if withab:
        ab0 = withab[0][0]["ablate"]
        body = []
        for m in withab:
            body.append([name(m[0]), str(len(m)), cell([r["ablate"]["pruned_channels"] for r in m], 1, 1, "")
                         + f" of {m[0]['ablate']['eligible']}"] +
                        [cell([r["ablate"][v] for r in m]) for v in ("baseline", "pruned")] +
                        [cell([x for r in m for x in r["ablate"]["random_draws"]])] +
                        [cell([r["ablate"].get(v) for r in m]) for v in ("largest", "reenabled")])
        out[f"Pruning abs(gamma) < {ab0['prune_below']:g} ({ab0['examples']} test images)"] = table(
            ["group", "seeds", "pruned channels", "baseline", "pruned", "random, same count (all draws)",
             "largest abs(gamma)", "re-enabled"], body)
        fractions = list(ab0["curve"]["smallest"])
        body = [[name(m[0]), str(len(m))] + [f"{cell([r['ablate']['curve']['smallest'][f] for r in m])} / "
                                             f"{cell([r['ablate']['curve']['random'][f] for r in m])}" for f in fractions]
                for m in withab if m[0]["mode"] in ("bn", "all")]
        out["Pruning curve (smallest abs(gamma) / random)"] = table(["group", "seeds"] + [f"{100 * float(f):g}%" for f in fractions], body)

    wd = [r for r in rows if r["study"] == "weight_decay"]
    if wd:
        base = [r for r in finals if r["arch"] == "cifar_resnet_14" and r["mode"] == "bn"]
        body = []
        for value, m in [(1e-4, base)] + sorted(((float(k[0]), v) for k, v in groups(latest(wd), "weight_decay").items())):
            body.append([f"{value:g}", str(len(m))] + [cell([frac(r, t) for r in m]) for t in ("0.01", "0.1")] +
                        [cell([r["mean_abs_gamma"] for r in m], scale=1, digits=4, unit="")] +
                        [cell([r["test_acc"] for r in m])])
        out["Weight decay (R-14 bn, 3 epochs)"] = table(["weight decay", "seeds", "< 0.01", "< 0.1", "mean abs(gamma)",
                                                         "test accuracy"], sorted(body, key=lambda b: float(b[0])))

    schedule = [r for r in rows if r["study"] == "schedule"]
    if schedule:
        three = [dict(r, epochs=3) for r in finals if r["arch"] == "cifar_resnet_14" and r["mode"] in ("bn", "all")]
        body = []
        for (epochs, mode), m in sorted(groups(three + latest(schedule), "epochs", "mode").items(),
                                        key=lambda kv: (kv[0][1], int(kv[0][0]))):
            body.append([f"R-14 {mode}", str(epochs), str(len(m))] + [cell([frac(r, t) for r in m]) for t in ("0.01", "0.1")] +
                        [cell([r["sparsity"]["dead"] for r in m if "sparsity" in r], 1, 1, "")] +
                        [cell([r["test_acc"] for r in m])])
        out["Schedule length (latest epoch)"] = table(["group", "epochs trained", "seeds", "< 0.01", "< 0.1",
                                                       "dead ReLU channels", "test accuracy"], body)
        body = []
        for r in sorted(schedule, key=lambda r: (r["mode"], int(r["epochs"]), r["epoch"])):
            if not (r["epoch"] <= 3 or r["epoch"] % 5 == 0 or r["epoch"] == int(r["epochs"])):
                continue
            body.append([f"R-14 {r['mode']}", str(r["epochs"]), str(r["epoch"])] + [f"{100 * frac(r, t):.2f}%" for t in ("0.01", "0.1")]
                        + [f"{100 * r['test_acc']:.2f}%"])
        out["Along the longer schedules (epochs 0-3, every fifth, the last)"] = table(["group", "schedule", "epoch", "< 0.01", "< 0.1", "test accuracy"], body)

    if numbers["drift"]:
        ref = next(r for r in main if r["label"] == numbers["drift"][0]["reference"])
        body = [["default (the sweep's run)", f"{100 * ref['test_acc']:.2f}%", f"{ref['small_gamma']['0.01']} / {ref['bn_channels']}",
                 f"{ref['small_gamma']['0.1']} / {ref['bn_channels']}", "0"]]
        for d in numbers["drift"]:
            body.append([d["variant"], f"{100 * d['test_acc']:.2f}%", f"{d['small_gamma']['0.01']} / {d['bn_channels']}",
                         f"{d['small_gamma']['0.1']} / {d['bn_channels']}", f"{d['max_abs_gamma_diff']:.3g}"])
        out["Numerical paths, the same seed (R-14 bn, seed 0)"] = table(
            ["path", "test accuracy", "abs(gamma) < 0.01", "abs(gamma) < 0.1", "max abs(gamma) difference"], body)

    out["Claims"] = claims_table(by_group, ts)
    return out


def claims_table(by_group: dict, ts: list[str]) -> str:
    """The paper's claims, each with its measured means ± sd and a verdict by `spread_verdict`."""
    def get(arch, mode):
        return by_group.get((arch, mode), [])

    def acc(arch, mode):
        return [r["test_acc"] for r in get(arch, mode)]

    def small(arch, mode, t):
        return [frac(r, t) for r in get(arch, mode)]

    def pruned(arch, mode):
        return [r["ablate"]["pruned"] for r in get(arch, mode) if "ablate" in r]

    def randomly(arch, mode):
        return [sum(r["ablate"]["random_draws"]) / len(r["ablate"]["random_draws"]) for r in get(arch, mode) if "ablate" in r]

    rows = []
    r14, r32 = "cifar_resnet_14", "cifar_resnet_32"
    for text, a, b in (
            ("R-14 `bn` above `random` (k=2, equal trainable count)", acc(r14, "bn"), acc(r14, "random")),
            ("R-14 `bn+output` above `bn`", acc(r14, "bn+output"), acc(r14, "bn")),
            ("R-14 `bn` above `output`", acc(r14, "bn"), acc(r14, "output")),
            ("`bn` improves with depth (R-14 -> R-32)", acc(r32, "bn"), acc(r14, "bn")),
            ("`all` above `bn` (R-14)", acc(r14, "all"), acc(r14, "bn")),
            ("`all` above `bn` (R-32)", acc(r32, "all"), acc(r32, "bn")),
            ("more abs(gamma) < 0.01 after `bn` than `all` (R-14)", small(r14, "bn", "0.01"), small(r14, "all", "0.01")),
            ("more abs(gamma) < 0.01 after `bn` than `all` (R-32)", small(r32, "bn", "0.01"), small(r32, "all", "0.01")),
            ("more abs(gamma) < 0.1 after `bn` than `all` (R-14)", small(r14, "bn", "0.1"), small(r14, "all", "0.1")),
            ("more abs(gamma) < 0.1 after `bn` than `all` (R-32)", small(r32, "bn", "0.1"), small(r32, "all", "0.1")),
            ("pruning abs(gamma) < 0.01 costs less than as many random channels (R-14 `bn`)",
             pruned(r14, "bn"), randomly(r14, "bn")),
            ("pruning abs(gamma) < 0.01 costs less than as many random channels (R-32 `bn`)",
             pruned(r32, "bn"), randomly(r32, "bn"))):
        if a and b:
            rows.append([text, cell(a), cell(b), spread_verdict(a, b) if mean_sd(a)[0] > mean_sd(b)[0] else
                         ("opposite, " + spread_verdict(a, b))])
    return table(["claim", "first", "second", "verdict (difference > sd + sd)"], rows)


def tables_markdown(numbers: dict) -> str:
    return "\n\n".join(f"### {title}\n\n{text}" for title, text in render(numbers).items()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="read the studies, write the numbers file")
    c.add_argument("main", type=Path, help="the bn_only_cpu sweep (its study.zarr)")
    c.add_argument("--wd", type=Path, help="the weight-decay sweep")
    c.add_argument("--schedule", type=Path, help="the schedule-length sweep")
    c.add_argument("--drift", action="append", default=[], help="NAME=RUN_DIR: the R-14 bn seed-0 run on another numerical path")
    c.add_argument("--out", type=Path, required=True, help="the numbers file to write (JSON)")
    t = sub.add_parser("tables", help="the doc's tables from a numbers file")
    t.add_argument("numbers", type=Path)
    args = parser.parse_args()
    if args.command == "collect":
        numbers = collect(args)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, args.out)
        print(tables_markdown(numbers))
    else:
        print(tables_markdown(json.loads(args.numbers.read_text())))


if __name__ == "__main__":
    main()
