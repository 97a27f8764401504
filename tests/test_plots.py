"""Figures show the numbers of their Dataset: the plotted lines, bars and images carry the stored values, and
the rendered panels are not blank. `rfprobe.plots.figure` dispatches on the pass that wrote a result."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from rfprobe.checkpoint import load_checkpoint, save_checkpoint
from rfprobe.data import load_dataset
from rfprobe.errors import RfprobeError
from rfprobe.models import build_model
from rfprobe.passes import ablate, affine, dead, partition, signal, sparsity
from rfprobe.plots import figure
from rfprobe.results import stack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each pass's stacked result for two tiny checkpoints (one with half its gammas pushed to ~0)."""
    root = tmp_path_factory.mktemp("plots")
    ckpts = []
    for i, label in enumerate(("a", "b")):
        model = build_model("cifar_resnet_8_4", 10, seed=i)
        if i:
            for m in model.modules():
                if hasattr(m, "running_var"):
                    m.weight.data[::2] = 1e-4
        save_checkpoint(root / f"{label}.pt", model, mode="bn", dataset="synthetic", epoch=1)
        ckpts.append(load_checkpoint(root / f"{label}.pt"))
    data = load_dataset("synthetic", "test", limit=64)
    mlp = build_model("mlp_2x8", 2, seed=0)
    save_checkpoint(root / "mlp.pt", mlp, mode="none", dataset="toy2d:moons", epoch=0)
    moons = load_dataset("toy2d:moons", "test", limit=64)
    labels = ["a", "b"]
    return {
        "affine": affine.run_checkpoints(ckpts, labels, bins=20),
        "dead": stack([dead.run_checkpoint(c) for c in ckpts], labels),
        "sparsity": stack([sparsity.run_checkpoint(c, data, batch_size=32) for c in ckpts], labels),
        "ablate": stack([ablate.run_checkpoint(c, data, {"seeds": 2, "fractions": "0,0.5"}, batch_size=32)
                         for c in ckpts], labels),
        "signal": stack([signal.run_checkpoint(c, None, {"batch": 16}) for c in ckpts], labels),
        "partition": stack([partition.run_checkpoint(
            load_checkpoint(root / "mlp.pt"), moons,
            {"segments": 2, "exact_points": 1, "probes": 4, "lc_points": 2, "jitter_batches": 0,
             "slice_resolution": 32})], ["mlp"]),
    }


def lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()]


def has_line(fig, y) -> bool:
    """Some plotted line's y-data equals `y` (NaN where `y` is NaN)."""
    y = np.asarray(y, float)
    return any(len(line.get_ydata()) == len(y)
               and np.allclose(np.asarray(line.get_ydata(), float), y, equal_nan=True) for line in lines(fig))


def drawn_fraction(fig, ax) -> float:
    """The fraction of pixels inside `ax` that are not the background colour (white) once rendered."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    box = ax.get_window_extent()
    height = pixels.shape[0]
    region = pixels[int(height - box.y1):int(height - box.y0), int(box.x0):int(box.x1)]
    return float((region.min(axis=-1) < 250).mean())


@pytest.mark.parametrize("name", ["affine", "dead", "sparsity", "ablate", "signal", "partition"])
def test_every_visible_panel_is_drawn(results, name):
    fig = figure(results[name])
    try:
        visible = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
        assert visible, f"{name}: no panel with data"
        for ax in visible:
            assert drawn_fraction(fig, ax) > 0.003, f"{name}: panel {ax.get_title()!r} is blank"
    finally:
        plt.close(fig)


def test_dead_lines_are_the_per_layer_fractions(results):
    ds = results["dead"]
    fig = figure(ds)
    for label in ("a", "b"):
        for t in ds["threshold"].values:
            one = ds.sel(checkpoint=label, threshold=t)
            valid = np.isfinite(np.asarray(one["n_channels"].values, float))
            assert has_line(fig, one["frac_dead"].values[valid])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [f"|gamma| < {t:g}" for t in ds["threshold"].values]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    pooled = float(ds["pooled_frac_dead"].sel(checkpoint="b", threshold=ds["threshold"].values[0], pool="all"))
    assert f"b (pooled {pooled:.1%})" in legend and pooled > 0.4
    plt.close(fig)


def test_signal_lines_are_the_curves(results):
    ds = results["signal"]
    fig = figure(ds)
    for label in ("a", "b"):
        for var in ("squared_mean", "variance", "residual_variance"):
            assert has_line(fig, ds[var].sel(checkpoint=label).values), (label, var)
    plt.close(fig)


def test_ablate_curves_are_the_mean_accuracies(results):
    ds = results["ablate"]
    fig = figure(ds)
    for label in ("a", "b"):
        curve = ds["curve_accuracy"].sel(checkpoint=label)
        assert has_line(fig, curve.sel(curve="smallest").mean("draw").values)
        assert has_line(fig, curve.sel(curve="random").mean("draw").values)
    plt.close(fig)


def test_affine_stairs_are_each_stages_histogram_fractions(results):
    ds = results["affine"]
    fig = figure(ds)
    stairs = {}
    for ax in fig.axes:
        for artist in ax.patches:
            if hasattr(artist, "get_data") and ax.get_title().startswith("gamma, stage"):
                stairs.setdefault(ax.get_title(), []).append(np.asarray(artist.get_data().values))
    for stage in np.unique(ds["stage"].values[~np.isnan(ds["stage"].values.astype(float))]).astype(int):
        drawn = stairs[f"gamma, stage {stage}"]
        for label in ("a", "b"):
            one = ds.sel(checkpoint=label)
            hist = one["gamma_hist"].values[one["stage"].values == stage].sum(axis=0)
            assert any(np.allclose(values, hist / hist.sum()) for values in drawn), (stage, label)
    plt.close(fig)


def test_partition_slice_image_colours_every_stored_region(results):
    ds = results["partition"]
    fig = figure(ds)
    images = [im for ax in fig.axes for im in ax.get_images()]
    raster = ds["slice_raster"].sel(checkpoint="mlp").values
    assert len(images) == 1 and images[0].get_array().shape[:2] == raster.shape
    shown = np.asarray(images[0].get_array())[..., :3].reshape(-1, 3)
    assert len(np.unique(shown[(raster >= 0).ravel()], axis=0)) == len(np.unique(raster[raster >= 0]))
    plt.close(fig)


def test_figure_refuses_what_no_pass_wrote(results):
    with pytest.raises(RfprobeError, match="not an rfprobe result with a figure"):
        figure(results["dead"].assign_attrs(rfprobe_pass="mystery"))
