"""docs/reproduction.md's sweeps at smoke scale end to end (the presets with a tiny net on synthetic data), the
study's grouped numbers and figures against an independent reading of the per-checkpoint stores, passes run
on the latest checkpoint only, and the doc's tables against the committed numbers file."""

import importlib.util
import json
import re
import statistics
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from rfprobe.results import open_result
from rfprobe.study import open_study
from train.sweep import main as sweep_main

PRESETS = REPO / "analyses" / "sweeps"
SMALL_ARCH = {"cifar_resnet_14": "cifar_resnet_8_4", "cifar_resnet_32": "cifar_resnet_14_4"}
NUMBERS = REPO / "docs" / "reproduction_numbers.json"
DOC = REPO / "docs" / "reproduction.md"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduction_numbers", REPO / "scripts" / "reproduction_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(table: dict, path: Path) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in table.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items() if not isinstance(vv, dict)]
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    lines.append(f"[{k}.{kk}]")
                    lines += [f"{a} = {toml_value(b)}" for a, b in vv.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for row in v:
                lines.append(f"[[{k}]]")
                lines += [f"{a} = {toml_value(b)}" for a, b in row.items()]
    path.write_text("\n".join(lines) + "\n")


def smoke_scale(preset: Path, out: Path) -> Path:
    """The preset with everything that sets its scale shrunk (a tiny net per architecture, synthetic data, two
    seeds, 1-2 epochs) and everything that sets its structure kept (modes, excludes, grid keys, analysis)."""
    spec = tomllib.loads(preset.read_text())
    small = lambda a: SMALL_ARCH.get(a, a)  # noqa: E731
    spec.update(dataset="synthetic", limit=96, test_limit=48, batch_size=48, eval_batch_size=48, threads=1)
    if "arch" in spec:
        spec["arch"] = small(spec["arch"])
    if "epochs" in spec:
        spec["epochs"] = 2
    grid = spec["grid"]
    if "arch" in grid:
        grid["arch"] = [small(a) for a in grid["arch"]]
    if "seed" in grid:
        grid["seed"] = grid["seed"][:2]
    if "epochs" in grid:
        grid["epochs"] = [3 if e > 10 else 1 for e in grid["epochs"]]
    for row in spec.get("exclude", []):
        if "arch" in row:
            row["arch"] = small(row["arch"])
        if "epochs" in row:
            row["epochs"] = 3 if row["epochs"] > 10 else 1
    analysis = spec["analysis"]
    analysis.update(dataset="synthetic", limit=32)
    if "ablate" in analysis:
        analysis["ablate"].update(seeds=2, batch_size=16)
    path = out / preset.name
    write_toml(spec, path)
    return path


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduction")
    out = {}
    for name in ("bn_only_cpu", "bn_only_cpu_wd", "bn_only_cpu_schedule"):
        out[name] = root / name
        with pytest.raises(SystemExit) as exit_:
            sweep_main([str(smoke_scale(PRESETS / f"{name}.toml", root)), "--out", str(out[name]), "--jobs", "2"])
        assert exit_.value.code in (0, None)
    return out


def independent_latest(study: Path, group: str, read) -> dict[tuple, list[float]]:
    """Per (arch, mode, extra coordinates), `read(store)` at each run's latest checkpoint, from the
    per-checkpoint stores and checkpoint.json files (not the merged study)."""
    recs = [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*/checkpoint.json"))]
    last = {}
    for r in recs:
        if (study / "runs" / r["label"] / f"{group}.zarr").exists() and (
                r["run"] not in last or r["epoch"] > last[r["run"]]["epoch"]):
            last[r["run"]] = r
    out = {}
    for r in last.values():
        key = (r["arch"], r["mode"], *(str(v) for v in r["extra"].values()))
        out.setdefault(key, []).append(read(open_result(study / "runs" / r["label"] / f"{group}.zarr")))
    return out


def small_gamma(ds) -> float:
    t = int(np.flatnonzero(np.isclose(ds["threshold"].values, 0.01))[0])
    return float(ds["pooled_frac_dead"].isel(checkpoint=0).sel(pool="all").values[t])


def test_presets_run_end_to_end_at_smoke_scale(sweeps):
    tree = open_study(sweeps["bn_only_cpu"])
    assert set(tree.children) == {"affine", "dead", "sparsity", "ablate", "signal"}
    dead, ablate = tree["dead"].to_dataset(), tree["ablate"].to_dataset()
    runs = set(str(r) for r in dead["run"].values)
    assert len(runs) == 14  # all, bn, random, none x 2 seeds, bn+output, output; R-32: all, bn x 2 seeds
    assert dead.sizes["checkpoint"] == 8 * 3 + 6 * 2  # bn/all: init + 2 epochs; the others init + final
    assert ablate.sizes["checkpoint"] == len(runs)  # latest_only: each run's latest checkpoint
    assert tree["signal"].to_dataset().sizes["checkpoint"] == len(runs)
    wd = open_study(sweeps["bn_only_cpu_wd"])["dead"].to_dataset()
    assert sorted(set(wd["weight_decay"].values)) == ["0.0", "0.0005"]
    schedule = open_study(sweeps["bn_only_cpu_schedule"])["dead"].to_dataset()
    assert sorted(set(int(e) for e in schedule["epochs"].values)) == [1, 3]
    assert "save_every" not in schedule.coords


def test_grouped_numbers_equal_the_stores(sweeps):
    from rfprobe.study.groups import KEY_METRICS, key_table

    study = sweeps["bn_only_cpu_wd"]
    expected = independent_latest(study, "dead", small_gamma)
    names, rows = key_table(open_study(study).load())
    column = names.index("|gamma| < 0.01")
    assert len(rows) == len(expected) == 2
    for label, n, cells in rows:
        key = next(k for k in expected if f"weight_decay={k[2]}" == label)
        values = expected[key]
        assert n == len(values) == 3 - 1
        assert cells[column].mean == pytest.approx(statistics.mean(values), abs=1e-12)
        assert cells[column].sd == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert any(m.name == "|gamma| < 0.01" for m in KEY_METRICS)


def test_group_figure_bars_and_trajectory_bands_equal_the_study(sweeps):
    from rfprobe.plots.study import groups_figure, trajectory_figure

    study = sweeps["bn_only_cpu"]
    tree = open_study(study).load()
    expected = independent_latest(study, "dead", small_gamma)
    fig = groups_figure(tree)
    ax = next(a for a in fig.axes if a.get_title().startswith("|gamma| < 0.01"))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == len(labels) == len(expected)
    for label, height in zip(labels, heights):
        arch, mode = label.split(" ")
        assert height == pytest.approx(100 * statistics.mean(expected[(arch, mode)]), abs=1e-9)
    bars = [c for c in ax.collections if c.get_segments()]  # error bars: one vertical segment per group with 2 runs
    spans = sorted(float(abs(s[1][1] - s[0][1])) for c in bars for s in c.get_segments())
    two = sorted(200 * statistics.stdev(v) for v in expected.values() if len(v) > 1)
    assert spans == pytest.approx(two, abs=1e-9)

    fig = trajectory_figure(tree)
    ax = next(a for a in fig.axes if a.get_title().startswith("|gamma| < 0.01"))
    assert "cifar_resnet_8_4 none (n=2)" in [line.get_label() for line in ax.get_lines()]  # init.pt = final.pt: once
    dead = tree["dead"].to_dataset()
    line = next(line for line in ax.get_lines() if line.get_label().startswith("cifar_resnet_8_4 bn "))
    members = (dead["arch"].values == "cifar_resnet_8_4") & (dead["mode"].values == "bn")
    for epoch, y in zip(line.get_xdata(), line.get_ydata()):
        at = members & (dead["epoch"].values == epoch)
        values = dead["pooled_frac_dead"].sel(pool="all", threshold=0.01).values[at]
        assert y == pytest.approx(100 * values.mean(), abs=1e-9) and at.sum() == 2


def test_pruning_curves_equal_the_stores(sweeps):
    from rfprobe.plots.study import pruning_figure

    study = sweeps["bn_only_cpu"]
    curves = independent_latest(study, "ablate", lambda ds: ds["curve_accuracy"].isel(checkpoint=0).sel(
        curve="smallest").mean("draw").values)
    fig = pruning_figure(open_study(study).load())
    ax = next(a for a in fig.axes if a.get_title() == "channels pruned: smallest")
    for line in ax.get_lines():
        arch, mode = line.get_label().split(" (")[0].split(" ")
        runs = np.array(curves[(arch, mode)])
        assert line.get_ydata() == pytest.approx(100 * runs.mean(axis=0), abs=1e-9)
    assert len(ax.get_lines()) == len(curves) == 8


def test_report_leads_with_grouped_tables_and_figures(sweeps):
    from rfprobe.report import build

    text = build(sweeps["bn_only_cpu"])
    order = [text.index(h) for h in ("<h2>Key numbers by group</h2>", "<h2>By group</h2>", "<h2>Over training</h2>",
                                     "<h2>Against depth</h2>", "<h2>Pruning curves</h2>", "<h2>Per BN layer</h2>",
                                     '<h2 id="affine">')]
    assert order == sorted(order)
    table = text[text.index('<table class="prov num">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 1 + 8  # header + one row per (arch, mode)
    assert re.search(r"<td>cifar_resnet_8_4 bn</td><td>2</td><td>\d+\.\d\d ± \d+\.\d\d</td>", table)


def test_numbers_script_renders_every_table_at_smoke_scale(sweeps, tmp_path):
    script = load_script()

    class Args:
        main = sweeps["bn_only_cpu"]
        wd = sweeps["bn_only_cpu_wd"]
        schedule = sweeps["bn_only_cpu_schedule"]
        drift = []

    numbers = json.loads(json.dumps(script.collect(Args)))
    tables = script.render(numbers)
    for title in ("Accuracy after training", "Small-|gamma| fraction, all BN channels pooled", "Along training",
                  "Per seed", "Weight decay (R-14 bn, 3 epochs)", "Schedule length (latest epoch)", "Claims"):
        assert title in tables
    accuracy = tables["Accuracy after training"].splitlines()
    assert len(accuracy) == 2 + 8  # header, rule, one row per (arch, mode)
    per_seed = [r for r in numbers["checkpoints"] if r["study"] == "main" and r["mode"] == "bn"
                and r["arch"] == "cifar_resnet_8_4" and r["epoch"] == 2]
    mean = statistics.mean(r["test_acc"] for r in per_seed)
    sd = statistics.stdev(r["test_acc"] for r in per_seed)
    assert "| cifar_resnet_8_4 bn | 2 | " in tables["Accuracy after training"]
    assert f"{100 * mean:.2f} ± {100 * sd:.2f}%" in tables["Accuracy after training"]
    for r in numbers["checkpoints"]:
        assert 0 <= r["small_gamma"]["0.01"] <= r["small_gamma"]["0.1"] <= r["bn_channels"]


def test_spread_verdict():
    script = load_script()
    assert script.spread_verdict([0.40, 0.41, 0.42], [0.30, 0.31, 0.32]) == "agrees"
    assert script.spread_verdict([0.40, 0.45, 0.50], [0.38, 0.40, 0.42]) == "within the spread"
    assert script.spread_verdict([0.40], [0.30, 0.31]) == "one seed: no spread"
    assert script.cell([0.3678, 0.3580, 0.3612]) == f"{100 * statistics.mean([0.3678, 0.3580, 0.3612]):.2f} ± " \
                                                   f"{100 * statistics.stdev([0.3678, 0.3580, 0.3612]):.2f}%"


@pytest.mark.skipif(not NUMBERS.exists(), reason="no committed numbers file")
def test_the_docs_tables_equal_the_numbers_file():
    script = load_script()
    doc = DOC.read_text()
    for title, text in script.render(json.loads(NUMBERS.read_text())).items():
        assert f"### {title}\n\n{text}\n" in doc, title


def test_latest_only_must_name_a_pass_of_the_study():
    from rfprobe.errors import RfprobeError
    from rfprobe.study import validate
    from rfprobe.studyconfig import study_request_from_config

    request, _ = study_request_from_config({"passes": "affine,dead", "latest_only": ["dead"]}, "test")
    validate(request)
    assert request.latest_only == ("dead",)
    request, _ = study_request_from_config({"passes": "dead", "latest_only": "ablate"}, "test")
    with pytest.raises(RfprobeError, match="--latest-only: ablate not among --passes"):
        validate(request)


def test_numbers_quoted_from_other_docs_are_there():
    """Sections 3 and 4 quote docs/partition_smart_init.md and docs/spp.md: each of their numbers is in the
    doc it cites."""
    doc = DOC.read_text()
    for start, end, source in (("## 3. ", "## 4. ", "partition_smart_init.md"), ("## 4. ", "## Numbers", "spp.md")):
        section = doc[doc.index(start):doc.index(end)]
        cited = (REPO / "docs" / source).read_text()
        numbers = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", section.split("\n", 1)[1]))
        assert numbers, start
        missing = sorted(n for n in numbers if n not in cited)
        assert not missing, (source, missing)
