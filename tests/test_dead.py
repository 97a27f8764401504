import json

import numpy as np
import pytest
import torch
import xarray as xr

from affine_models import RESNET8_4, hand_set_resnet, hand_values
from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import main
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.passes import dead
from rfprobe.results import open_result, save_result, stack

T = (1e-3, 1e-2, 5e-2, 0.1)


def set_bn(model, values):
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, (gamma, beta) in values.items():
            modules[name].weight.copy_(torch.tensor(gamma))
            modules[name].bias.copy_(torch.tensor(beta))
    return model


def test_mlp_counts_by_hand():
    model = set_bn(build_model("mlp_2x8"), {
        "layers.0.bn": ([0.0, 0.0009765625, -0.0078125, 0.03125, -0.0625, 0.25, 1.0, -1.0],
                        [0.0, -1.0, 1.0, -0.125, 0.5, -0.25, 0.0, 0.0]),
        "layers.1.bn": ([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.03125],
                        [0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5])})
    ds = dead.run(model, thresholds=T)
    assert ds["n_dead"].values.tolist() == [[2, 3, 4, 5], [1, 1, 2, 2]]
    assert ds["n_off"].values.tolist() == [[2, 2, 3, 3], [0, 0, 1, 1]]
    pooled = ds.sel(pool="all")
    assert pooled["pooled_n_dead"].values.tolist() == [3, 4, 6, 7]
    assert pooled["pooled_n_off"].values.tolist() == [2, 2, 4, 4]
    np.testing.assert_array_equal(pooled["pooled_frac_dead"].values, np.array([3, 4, 6, 7]) / 16)
    assert int(pooled["pooled_n_channels"]) == 16 and list(ds["role"].values) == ["relu", "relu"]
    # strict inequality: |gamma| == t is not dead
    strict = dead.run(model, thresholds=[0.5, 1.0, 1.0000001])
    assert strict["n_dead"].values.tolist() == [[6, 6, 8], [2, 8, 8]]


def brute_force(thresholds):
    """Per-layer dead and off counts of hand_set_resnet, by explicit loops over the hand-set values."""
    per_layer = []
    for i, (name, n, role) in enumerate(RESNET8_4):
        gamma, beta = hand_values(i, n)
        per_layer.append((
            [sum(1 for g in gamma if abs(g) < t) for t in thresholds],
            [sum(1 for g, b in zip(gamma, beta) if abs(g) < t and b <= 0) if role == "relu" else 0 for t in thresholds]))
    return per_layer


def test_resnet_per_layer_and_pools_match_brute_force():
    ds = dead.run(hand_set_resnet(), thresholds=T)
    expected = brute_force(T)
    assert list(ds["layer"].values) == [name for name, _, _ in RESNET8_4]
    assert list(ds["role"].values) == [role for _, _, role in RESNET8_4]
    assert ds["n_dead"].values.tolist() == [d for d, _ in expected]
    assert ds["n_off"].values.tolist() == [o for _, o in expected]
    channels = np.array([n for _, n, _ in RESNET8_4])
    np.testing.assert_allclose(ds["frac_dead"].values, np.array([d for d, _ in expected]) / channels[:, None])
    for pool, keep in {"all": lambda r: True, "no_shortcut": lambda r: r != "shortcut", "relu": lambda r: r == "relu"}.items():
        rows = [i for i, (_, _, role) in enumerate(RESNET8_4) if keep(role)]
        total = int(channels[rows].sum())
        got = ds.sel(pool=pool)
        assert int(got["pooled_n_channels"]) == total
        assert got["pooled_n_dead"].values.tolist() == [sum(expected[i][0][k] for i in rows) for k in range(len(T))]
        assert got["pooled_n_off"].values.tolist() == [sum(expected[i][1][k] for i in rows) for k in range(len(T))]
        np.testing.assert_allclose(got["pooled_frac_off"].values, got["pooled_n_off"].values / total)
    assert int(ds.sel(pool="no_shortcut")["pooled_n_channels"]) == 84 - 24
    for key in ("dead_definition", "off_definition", "pool_definition", "thresholds"):
        assert ds.attrs[key]
    assert ds.attrs["thresholds"] == "0.001, 0.01, 0.05, 0.1"


def test_thresholds_checked_and_sorted():
    assert dead.check_options([0.1, 0.01, 0.1]).tolist() == [0.01, 0.1]
    assert dead.check_options(None).tolist() == list(T)
    for bad in ([0.0], [-1.0], [float("nan")], [float("inf")]):
        with pytest.raises(RfprobeError, match="--threshold must be finite and > 0"):
            dead.check_options(bad)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead")
    paths = [root / "bn-run" / "final.pt", root / "all-run" / "final.pt"]
    save_checkpoint(paths[0], hand_set_resnet(scale=2.0**-7), mode="bn", epoch=3)
    save_checkpoint(paths[1], hand_set_resnet(), mode="all", epoch=3)
    return paths


def test_stack_two_checkpoints_and_zarr_roundtrip(two_runs, tmp_path):
    from rfprobe.checkpoint import load_checkpoint

    ckpts = [load_checkpoint(p) for p in two_runs]
    ds = stack([dead.run_checkpoint(c, options={"threshold": list(T)}) for c in ckpts], [c.label for c in ckpts])
    assert list(ds["checkpoint"].values) == ["bn-run", "all-run"] and list(ds["mode"].values) == ["bn", "all"]
    alone = dead.run(ckpts[1].model, thresholds=T)
    xr.testing.assert_equal(ds["n_dead"].sel(checkpoint="all-run", drop=True), alone["n_dead"])
    # gammas scaled by 2^-7 (exact in float32): |g / 128| < t  <=>  |g| < 128 t
    assert ds["n_dead"].sel(checkpoint="bn-run").values.tolist() == [d for d, _ in brute_force([128 * t for t in T])]
    path = save_result(ds, tmp_path / "dead.zarr")
    xr.testing.assert_identical(xr.open_zarr(path).load(), ds)
    assert open_result(path).attrs["rfprobe_pass"] == "dead"


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["dead", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_json_plot_and_labels(two_runs, tmp_path, capsys):
    out, plot = tmp_path / "d.zarr", tmp_path / "d.png"
    code, stdout, err = run_cli(capsys, *two_runs, "--json", "--out", out, "--plot", plot, "--label", "A",
                                "--label", "B", "--threshold", "0.01", "--threshold", "0.1")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["thresholds"] == [0.01, 0.1] and set(report["checkpoints"]) == {"A", "B"}
    expected = brute_force([0.01, 0.1])
    b = report["checkpoints"]["B"]["all"]
    assert b["n_channels"] == 84 and b["dead_n"] == {"0.01": sum(d[0] for d, _ in expected), "0.1": sum(d[1] for d, _ in expected)}
    assert b["off_n"]["0.1"] == sum(o[1] for _, o in expected)
    assert list(open_result(out)["checkpoint"].values) == ["A", "B"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_table_pooled_first(two_runs, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, two_runs[1], "--out", tmp_path / "d.zarr")
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] in ("pooled", "bn"))
    assert lines[first].split()[:3] == ["pooled", "all", "84"] and lines[first + 3].split()[0] == "bn"


@pytest.mark.slow
def test_cli_torchvision_resnet18_state_dict(tmp_path, capsys):
    path = tmp_path / "resnet18.pth"
    torch.save(build_model("torchvision:resnet18", num_classes=1000, seed=0).state_dict(), path)
    code, stdout, err = run_cli(capsys, path, "--arch", "torchvision:resnet18", "--out", tmp_path / "r.zarr", "--json")
    assert code == 0, err
    report = json.loads(stdout)["checkpoints"]["resnet18"]
    assert report["all"]["n_channels"] == 64 + 4 * (64 + 128 + 256 + 512) + 128 + 256 + 512
    assert report["all"]["dead_n"]["0.1"] == 0  # torchvision initialises every gamma to 1
    ds = open_result(tmp_path / "r.zarr")
    roles = dict(zip(ds["layer"].values, ds["role"].values))
    assert len(roles) == 20 and roles["bn1"] == "relu" and roles["layer4.1.bn2"] == "residual"
    assert [n for n, r in roles.items() if r == "shortcut"] == [f"layer{i}.0.downsample.1" for i in (2, 3, 4)]


def test_cli_bad_input_one_line_exit_2(two_runs, tmp_path, capsys):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    (tmp_path / "exists.zarr").mkdir()
    save_checkpoint(tmp_path / "nobn.pt", build_model("torchvision:squeezenet1_1", num_classes=10), num_classes=10)
    cases = [
        ((tmp_path / "junk.pt",), "not a PyTorch checkpoint"),
        ((two_runs[0], "--out", tmp_path / "exists.zarr"), "exists"),
        ((tmp_path / "nobn.pt", "--out", tmp_path / "n.zarr"), "has no normalisation layers"),
        ((two_runs[0], "--threshold", "0", "--out", tmp_path / "t.zarr"), "--threshold"),
        ((two_runs[0], "--label", "a", "--label", "b", "--out", tmp_path / "l.zarr"), "--label"),
    ]
    for args, needle in cases:
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith("rfprobe: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "n.zarr").exists() and list((tmp_path / "exists.zarr").iterdir()) == []
