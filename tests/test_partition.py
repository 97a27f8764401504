"""The partition pass against hand computations on one-layer models, and its command line."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rfprobe.checkpoint import save_checkpoint
from rfprobe.cli import app, main
from rfprobe.data import Data, load_dataset
from rfprobe.geometry import Tangent, walk
from rfprobe.models import build_model
from rfprobe.normalization import custom
from rfprobe.passes import partition
from rfprobe.passes.base import SEGMENT_KINDS
from rfprobe.results import open_result, stack


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moons():
    return load_dataset("toy2d:moons", "train", n=2048)


def one_layer(width=8, seed=0):
    """mlp_1xW: x -> BN(W x) -> ReLU -> fc; beta = 0 at init, so unit k's boundary is <w_k, x> = mu_k."""
    return build_model(f"mlp_1x{width}", 2, seed=seed)


def test_recalibrate_bn_puts_boundaries_through_the_data_mean(moons):
    model = one_layer()
    net = partition.recalibrate_bn(model, moons, batch_size=300)
    x = moons.x.double()
    w = model.layers[0].linear.weight.detach().double()
    projected = x @ w.T
    bn = net.layers[0].bn
    np.testing.assert_allclose(bn.running_mean.numpy(), projected.mean(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.numpy(), projected.var(0, unbiased=False).numpy(), rtol=1e-10)
    # with beta = 0 the boundary <w_k, x> = mu_k passes through the data's mean
    np.testing.assert_allclose((x.mean(0) @ w.T - bn.running_mean).numpy(), 0, atol=1e-12)
    assert model.layers[0].bn.running_mean.abs().max() == 0, "the caller's model is left as it was"


def test_unit_distances_and_spread_by_hand(moons):
    model = partition.recalibrate_bn(one_layer(), moons)
    with torch.no_grad():
        model.layers[0].bn.bias.copy_(torch.linspace(-0.5, 0.5, 8, dtype=torch.float64))
    tf = Tangent.from_model(model)
    x = moons.x.double()
    stats = partition._unit_distance_stats(tf, x, 500)
    bn, w = model.layers[0].bn, model.layers[0].linear.weight.detach()
    sigma = (bn.running_var + bn.eps).sqrt()
    offset = bn.running_mean - bn.bias.detach() * sigma / bn.weight.detach()
    hand = ((x @ w.T - offset).abs() / w.norm(dim=1)).numpy()
    assert stats["unit_distance_median"][1][0] == pytest.approx(np.median(hand), rel=1e-10)
    spread = np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean().item())
    assert stats["data_spread"][1][0] == pytest.approx(spread, rel=1e-10)
    assert stats["unit_distance_hist"][1][0].sum() == pytest.approx(1.0)


def test_jitter_matches_sigma_over_sqrt_batch(moons):
    model = partition.recalibrate_bn(one_layer(16), moons)
    tf = Tangent.from_model(model)
    found = partition.jitter(model, tf, moons, 60, 32, "cpu", torch.Generator().manual_seed(0))
    ratio = found["jitter_offset_std"][1][0] / found["jitter_offset_predicted"][1][0]
    # batches drawn without replacement from 2048 points: expected ratio sqrt(1 - 32/2048) ~ 0.99, +-9% noise
    assert 0.8 < np.median(ratio) < 1.2
    assert found["jitter_ratio"][1][0] == pytest.approx(np.median(ratio))


def test_local_complexity_counts_hyperplanes_near_the_point():
    model = one_layer(8)
    tf = Tangent.from_model(model)
    w = model.layers[0].linear.weight.detach().double()
    normals = w / w.norm(dim=1, keepdim=True)
    # boundaries are lines through 0 (mu = 0, beta = 0); a point at distance d from line k along its normal
    points, expected = [], []
    g = torch.Generator().manual_seed(0)
    while len(points) < 12:
        k = int(torch.randint(8, (1,), generator=g))
        tangent = torch.stack([-normals[k, 1], normals[k, 0]])
        d = [0.001, 0.05][len(points) % 2]
        x = tangent * (0.5 + torch.rand(1, generator=g, dtype=torch.float64)) + d * normals[k]
        distances = (x @ normals.T).abs()
        others = torch.cat([distances[:k], distances[k + 1:]])
        if others.min() < 0.02:
            continue
        points.append(x)
        expected.append(1 if d < partition.LC_RADIUS / np.sqrt(2) else 0)
    total, per_layer = partition.local_complexity(tf, torch.stack(points), torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_array_equal(per_layer[:, 0], expected)


def test_local_complexity_counts_a_max_pool_window_once():
    """A 1x2 max-pool window (x_1, x_2): its boundary is the line x_1 = x_2; a point at distance d from it (d <
    r / sqrt(2): some vertex pair straddles it) changes the argmax, which flips two pair units but is one window."""
    from test_walk import TwoEntryPool

    tf = Tangent.from_model(TwoEntryPool().double())
    normal = torch.tensor([1.0, -1.0], dtype=torch.float64) / 2 ** 0.5
    distances = [0.001, 0.05, -0.002, 0.3]
    points = torch.stack([torch.tensor([0.7, 0.7], dtype=torch.float64) + d * normal for d in distances])
    total, per_layer = partition.local_complexity(tf, points.view(-1, 1, 1, 2), torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(per_layer[:, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(total, [1, 0, 1, 0])


def test_run_on_an_mlp_is_consistent(moons):
    model = one_layer(8)
    data = moons.subset(300)
    ds = partition.run(model, data, segments_per_kind=6, segment_kinds=SEGMENT_KINDS, exact_points=3, probes=32,
                       lc_points=8, jitter_batches=4, jitter_batch_size=32, slice_resolution=40, recalibrate=True,
                       batch_size=128)
    tf = Tangent.from_model(partition.recalibrate_bn(model, data, 128))
    x, _ = partition._points(data, 128, "cpu")
    segs = partition.segments(x, 6, 1.0, torch.Generator().manual_seed(0))
    direct = walk(tf, *segs["train-train"])
    np.testing.assert_array_equal(ds["breakpoints"].sel(segment_kind="train-train").values, direct.counts)
    assert (ds["segment_complete"] == 1).all()
    capped = partition.run(model, data, segments_per_kind=6, segment_kinds=SEGMENT_KINDS, exact_points=0, probes=0,
                           lc_points=0, jitter_batches=0, slice_plane=False, recalibrate=True, batch_size=128,
                           max_breakpoints=2)
    np.testing.assert_array_equal(capped["breakpoints"].values, np.minimum(ds["breakpoints"].values, 2))
    np.testing.assert_array_equal(capped["segment_complete"].values, ds["breakpoints"].values < 2)
    density = ds["breakpoints"].sum("segment") / ds["segment_length"].sum("segment")
    np.testing.assert_allclose(ds["breakpoint_density"].values, density.values)
    np.testing.assert_array_equal(ds["segment_walked"].values, 1.0)
    np.testing.assert_allclose(ds["exact_distance"].values, ds["exact_distance_layer"].min("layer").values)
    # one layer of 8 lines through the data mean: a line meets at most 8 + 1 regions, the box at most 37
    assert (ds["breakpoints"] <= 8).all() and 1 < int(ds["slice_regions"]) <= 37 and int(ds["slice_complete"]) == 1
    assert ds.attrs["rfprobe_pass"] == "partition" and ds.attrs["recalibrate_bn"] == 1
    assert set(np.unique(ds["slice_raster"].values)) <= set(range(int(ds["slice_regions"])))


@pytest.mark.slow
def test_run_on_a_small_resnet_slices_the_plane_through_three_images():
    model = build_model("cifar_resnet_8_2", seed=0)
    model.rfprobe_input_shape = (3, 8, 8)
    g = torch.Generator().manual_seed(0)
    data = Data("tiny", "test", torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8),
                torch.arange(12) % 10, tuple(map(str, range(10))), custom((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), "test")
    ds = partition.run(model, data, segments_per_kind=2, radius=0.5, exact_points=1, probes=8, lc_points=2,
                       jitter_batches=2, jitter_batch_size=4, slice_max_regions=30, slice_resolution=8,
                       recalibrate=True)
    np.testing.assert_array_equal(ds["slice_points"].values, [[0, 0], [1, 0], [0, 1]])
    assert int(ds["slice_regions"]) == 30 and int(ds["slice_complete"]) == 0
    assert ds["exact_distance"].values[0] > 0 and (ds["breakpoints"] > 0).any()
    assert np.isnan(ds["unit_distance_ratio"].sel(layer="blocks.0.add").item())
    assert np.isfinite(ds["unit_distance_ratio"].sel(layer="blocks.0.bn1").item())


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("part") / "run" / "final.pt"
    save_checkpoint(path, build_model("mlp_2x8", 2, seed=0), dataset="toy2d:moons", mode="all")
    return path


def test_cli_writes_result_and_figure(mlp_checkpoint, tmp_path):
    out, plot = tmp_path / "p.zarr", tmp_path / "p.png"
    args = ["partition", str(mlp_checkpoint), "--limit", "200", "--segments", "4", "--kinds", "radius,train-train",
            "--exact-points", "1",
            "--probes", "16", "--lc-points", "4", "--jitter-batches", "3", "--slice-resolution", "32",
            "--recalibrate-bn", "--device", "cpu", "--out", str(out), "--plot", str(plot), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recalibrate_bn"] and report["checkpoints"]["run"]["slice_complete"]
    ds = open_result(out)
    assert ds.sizes["checkpoint"] == 1 and ds.attrs["dataset"] == "toy2d:moons"
    assert list(ds["segment_kind"].values) == ["train-train", "radius"]
    assert report["checkpoints"]["run"]["slice_regions"] == int(ds["slice_regions"].item())
    assert plot.stat().st_size > 10_000


def test_cli_on_a_max_pool_vgg(tmp_path):
    """cifar_vgg_11 (four 2x2 max-pools) runs end to end: its pools are layers of kind maxpool that count their own
    argmax crossings along the segments."""
    vgg = tmp_path / "vgg.pt"
    save_checkpoint(vgg, build_model("cifar_vgg_11", seed=0), dataset="synthetic")
    out = tmp_path / "vgg.zarr"
    result = CliRunner().invoke(app, ["partition", str(vgg), "--dataset", "synthetic", "--limit", "4",
                                      "--segments", "1", "--kinds", "radius", "--radius", "0.02", "--exact-points", "0",
                                      "--probes", "2", "--lc-points", "1", "--jitter-batches", "0",
                                      "--slice-max-regions", "2", "--slice-resolution", "4", "--out", str(out),
                                      "--plot", str(tmp_path / "vgg.png"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vgg.png").stat().st_size > 10_000
    ds = open_result(out)
    pools = ds["kind"].values == "maxpool"
    assert pools.sum() == 4
    assert int(ds["breakpoints_layer"].isel(checkpoint=0, segment_kind=0).values[pools].sum()) > 0
    assert np.isnan(ds["unit_distance_ratio"].isel(checkpoint=0).values[pools]).all()


def test_cli_refuses_bad_input_in_one_line(mlp_checkpoint, tmp_path, capsys):
    zoo, arch = tmp_path / "zoo.pt", "rfprobe.models.examples:norm_zoo_net"
    save_checkpoint(zoo, build_model(arch, 10, seed=0), dataset="synthetic")
    cases = [([str(zoo), "--arch", arch, "--dataset", "synthetic", "--limit", "4", "--jitter-batches", "0"],
              "is not piecewise linear: groupnorm gn"),
             ([str(mlp_checkpoint), "--radius", "0"], "--radius"),
             ([str(mlp_checkpoint), "--kinds", "radius,diagonal"], "diagonal"),
             ([str(mlp_checkpoint), "--dataset", "synthetic", "--limit", "4"], "--jitter-batch-size 16 is larger"),
             ([str(mlp_checkpoint), "--dataset", "synthetic", "--limit", "4", "--jitter-batches", "0"], "shape")]
    for args, words in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["partition", *args, "--out", str(tmp_path / "x.zarr"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("rfprobe: error: ") and err.count("\n") == 1, err
        assert words in err
    assert not (tmp_path / "x.zarr").exists()


def test_stacking_models_with_different_partitions(moons):
    data = moons.subset(200)
    options = dict(segments_per_kind=2, exact_points=0, probes=0, lc_points=0, jitter_batches=0, slice_resolution=8)
    small = partition.run(one_layer(4), data, **options)
    large = partition.run(build_model("mlp_2x8", 2, seed=1), data, **options)
    ds = stack([small, large], ["small", "large"])
    assert ds.sizes["slice_edge"] == max(small.sizes["slice_edge"], large.sizes["slice_edge"])
    edges = ds["slice_edges"].sel(checkpoint="small").values
    assert np.isfinite(edges).all(axis=(1, 2)).sum() == small.sizes["slice_edge"]
    np.testing.assert_array_equal(ds["slice_regions"].values, [int(small["slice_regions"]), int(large["slice_regions"])])
