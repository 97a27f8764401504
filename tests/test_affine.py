import json
import statistics

import numpy as np
import pytest
import torch
import xarray as xr

from affine_models import RESNET8_4, hand_set_resnet, hand_values
from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.cli import main
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.passes import affine
from rfprobe.plots import save_figure
from rfprobe.plots.affine import affine_figure
from rfprobe.results import open_result, save_result


def test_gamma_beta_padded_with_layer_coords():
    ds = affine.run(hand_set_resnet())
    assert list(ds["layer"].values) == [name for name, _, _ in RESNET8_4]
    assert list(ds["role"].values) == [role for _, _, role in RESNET8_4]
    assert ds["n_channels"].values.tolist() == [n for _, n, _ in RESNET8_4]
    assert ds["depth"].values.tolist() == list(range(9)) and ds["stage"].values.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert ds["block"].values.tolist() == [-1, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.sizes["channel"] == 16
    for i, (_, n, _) in enumerate(RESNET8_4):
        gamma, beta = hand_values(i, n)
        assert ds["gamma"].values[i, :n].tolist() == gamma and ds["beta"].values[i, :n].tolist() == beta
        assert np.isnan(ds["gamma"].values[i, n:]).all() and np.isnan(ds["beta"].values[i, n:]).all()


def test_summaries_against_statistics_module():
    ds = affine.run(hand_set_resnet())
    everything = []
    for i, (_, n, _) in enumerate(RESNET8_4):
        gamma, beta = hand_values(i, n)
        everything += gamma
        layer = ds.isel(layer=i)
        assert float(layer["gamma_mean"]) == pytest.approx(statistics.fmean(gamma))
        assert float(layer["gamma_std"]) == pytest.approx(statistics.pstdev(gamma))
        assert float(layer["beta_std"]) == pytest.approx(statistics.pstdev(beta))
        assert float(layer["gamma_frac_negative"]) == sum(g < 0 for g in gamma) / n
        assert float(layer["beta_frac_negative"]) == sum(b < 0 for b in beta) / n
        q = layer["abs_gamma_quantiles"]
        assert float(q.sel(quantile=0.0)) == min(map(abs, gamma)) and float(q.sel(quantile=1.0)) == max(map(abs, gamma))
        assert float(q.sel(quantile=0.5)) == pytest.approx(statistics.median(map(abs, gamma)))
    assert int(ds["pooled_n_channels"]) == len(everything) == 84
    assert float(ds["pooled_gamma_mean"]) == pytest.approx(statistics.fmean(everything))
    assert float(ds["pooled_gamma_std"]) == pytest.approx(statistics.pstdev(everything))
    assert float(ds["pooled_abs_gamma_quantiles"].sel(quantile=0.5)) == pytest.approx(statistics.median(map(abs, everything)))
    assert float(ds["pooled_gamma_frac_negative"]) == sum(g < 0 for g in everything) / 84


def brute_histogram(values, edges):
    """Count values per bin by explicit comparison: [e_i, e_i+1), the last bin closed."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(edges) - 1):
            if edges[i] <= v < edges[i + 1] or (i == len(edges) - 2 and v == edges[-1]):
                counts[i] += 1
                break
    return counts


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("affine")
    paths = [root / "bn-run" / "final.pt", root / "all-run" / "final.pt"]
    save_checkpoint(paths[0], hand_set_resnet(scale=0.25), mode="bn")
    save_checkpoint(paths[1], hand_set_resnet(scale=3.0), mode="all")
    return paths


def test_histograms_share_edges_across_checkpoints(two_runs):
    ckpts = [load_checkpoint(p) for p in two_runs]
    ds = affine.run_checkpoints(ckpts, ["bn", "all"], bins=7)
    all_gammas = [g for s in (0.25, 3.0) for i, (_, n, _) in enumerate(RESNET8_4) for g in np.float32(hand_values(i, n)[0]) * np.float32(s)]
    edges = ds["gamma_bin_edges"].values
    assert len(edges) == 8 and edges[0] == min(all_gammas) and edges[-1] == max(all_gammas)
    np.testing.assert_allclose(np.diff(edges), (max(all_gammas) - min(all_gammas)) / 7)
    for label, scale in (("bn", 0.25), ("all", 3.0)):
        for i, (_, n, _) in enumerate(RESNET8_4):
            gamma, beta = hand_values(i, n)
            gamma = [float(np.float32(g) * np.float32(scale)) for g in gamma]
            one = ds.sel(checkpoint=label).isel(layer=i)
            assert one["gamma_hist"].values.tolist() == brute_histogram(gamma, edges)
            assert one["beta_hist"].values.tolist() == brute_histogram(beta, ds["beta_bin_edges"].values)
            assert int(one["gamma_hist"].sum()) == n
    assert list(ds["checkpoint"].values) == ["bn", "all"] and ds.attrs["bins"] == 7


def test_degenerate_range_and_bad_bins():
    edges = affine.shared_edges([np.ones(5)], 4)
    assert edges.tolist() == [0.5, 0.75, 1.0, 1.25, 1.5]
    with pytest.raises(RfprobeError, match="--bins must be between 1 and 10000, got 0"):
        affine.shared_edges([np.ones(5)], 0)


def test_no_bn_model_is_refused():
    with pytest.raises(RfprobeError, match="has no normalisation layers"):
        affine.run(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))


def test_zarr_roundtrip_and_figure_with_two_architectures(two_runs, tmp_path):
    mlp = tmp_path / "mlp" / "final.pt"
    save_checkpoint(mlp, build_model("mlp_2x8", seed=1))
    ckpts = [load_checkpoint(two_runs[0]), load_checkpoint(mlp)]
    ds = affine.run_checkpoints(ckpts, [c.label for c in ckpts])
    assert ds.sizes["layer"] == 9 + 2 and ds["role"].dims == ("checkpoint", "layer")
    assert np.isnan(ds["gamma"].sel(checkpoint="mlp", layer="bn").values).all()
    assert ds["gamma"].sel(checkpoint="mlp", layer="layers.1.bn").count() == 8
    path = save_result(ds, tmp_path / "a.zarr")
    xr.testing.assert_identical(xr.open_zarr(path).load(), ds)
    figure = save_figure(affine_figure(ds), tmp_path / "a.png")
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["affine", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_bare_openlth_state_dict_json_and_plot(tmp_path, capsys):
    bare = tmp_path / "openlth_model.pth"
    torch.save({"model." + k: v for k, v in hand_set_resnet().state_dict().items()}, bare)
    out, plot = tmp_path / "a.zarr", tmp_path / "a.pdf"
    code, stdout, err = run_cli(capsys, bare, "--arch", "cifar_resnet_8_4", "--json", "--bins", "5", "--out", out, "--plot", plot)
    assert code == 0, err
    report = json.loads(stdout)["checkpoints"]["openlth_model"]
    gammas = [g for i, (_, n, _) in enumerate(RESNET8_4) for g in hand_values(i, n)[0]]
    assert report["n_layers"] == 9 and report["n_channels"] == 84
    assert report["gamma_frac_negative"] == sum(g < 0 for g in gammas) / 84
    assert report["abs_gamma_quantiles"]["1"] == 2.0
    ds = open_result(out)
    assert ds.sizes["bin"] == 5 and ds.attrs["rfprobe_pass"] == "affine" and "affine_definition" in ds.attrs
    assert plot.stat().st_size > 5_000


def test_cli_table_and_bad_input(two_runs, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, *two_runs, "--out", tmp_path / "a.zarr")
    assert code == 0 and "bn-run" in stdout and "|gamma| q0.5" in stdout, err
    (tmp_path / "junk.pt").write_text("junk")
    for args, needle in [((tmp_path / "junk.pt",), "not a PyTorch checkpoint"),
                         ((two_runs[0], "--out", tmp_path / "a.zarr"), "exists"),
                         ((two_runs[0], "--bins", "0", "--out", tmp_path / "b.zarr"), "--bins"),
                         ((two_runs[0], "--bins", "100000", "--out", tmp_path / "b.zarr"), "--bins")]:
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1 and needle in err, err


def test_nan_gamma_left_out_of_summaries_and_never_dead():
    from rfprobe.passes import dead

    model = build_model("mlp_2x8")
    with torch.no_grad():
        model.layers[0].bn.weight.copy_(torch.tensor([float("nan"), 0.0, 0.5, -0.5, 1.0, 1.0, 1.0, 1.0]))
    ds = affine.run(model)
    assert float(ds["gamma_mean"][0]) == pytest.approx(statistics.fmean([0.0, 0.5, -0.5, 1.0, 1.0, 1.0, 1.0]))
    assert int(ds["gamma_hist"][0].sum()) == 7 and np.isfinite(ds["pooled_abs_gamma_quantiles"].values).all()
    assert dead.run(model, thresholds=[1e-3])["n_dead"].values[0].tolist() == [1]
