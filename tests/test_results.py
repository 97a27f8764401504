import os
import warnings

import numpy as np
import pytest
import xarray as xr

from rfprobe.errors import ResultExistsError, RfprobeError
from rfprobe.results import open_result, provenance, save_result, stack


class FakeCheckpoint:
    def __init__(self, path, arch="cifar_resnet_8", mode="bn"):
        from pathlib import Path

        self.path, self.sha256, self.arch, self.mode, self.epoch, self.nonfinite = Path(path), "ab" * 32, arch, mode, 3, []


def per_checkpoint(value, layers=("bn", "blocks.0.bn1"), arch="cifar_resnet_8"):
    ds = xr.Dataset(
        {"gamma": (("layer", "channel"), np.full((len(layers), 3), value, dtype=float))},
        coords={"layer": np.array(layers, dtype=object), "depth": ("layer", np.arange(len(layers))),
                "role": ("layer", np.array(["relu"] * len(layers), dtype=object))},
        attrs=provenance("affine", FakeCheckpoint(f"/runs/{value}/final.pt", arch), dataset="synthetic",
                         command=["rfprobe", "affine", "x.pt"], affine_definition="gamma as stored"),
    )
    return ds


def test_provenance_attrs_are_plain_values():
    attrs = per_checkpoint(1.0).attrs
    for key in ("rfprobe_pass", "rfprobe_version", "checkpoint", "checkpoint_sha256", "arch", "mode", "dataset",
                "split", "n_examples", "device", "created", "command"):
        assert key in attrs
    assert all(isinstance(v, (str, int, float)) for v in attrs.values())
    assert attrs["command"] == "rfprobe affine x.pt"


def test_stack_and_zarr_round_trip(tmp_path):
    ds = stack([per_checkpoint(1.0), per_checkpoint(2.0)], ["bn", "all"])
    assert ds.sizes["checkpoint"] == 2 and list(ds.checkpoint.values) == ["bn", "all"]
    assert ds.gamma.sel(checkpoint="all").values.max() == 2.0
    assert list(ds.checkpoint_path.values) == ["/runs/1.0/final.pt", "/runs/2.0/final.pt"]
    assert ds.attrs["checkpoint"] == "/runs/1.0/final.pt; /runs/2.0/final.pt"
    path = save_result(ds, tmp_path / "r" / "affine.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(path).load()
    checked = open_result(path)
    for loaded in (plain, checked):
        assert np.array_equal(loaded.gamma.values, ds.gamma.values)
        assert list(loaded.layer.values) == list(ds.layer.values) and list(loaded.role.values) == ["relu", "relu"]
        assert loaded.attrs == ds.attrs
        assert list(loaded.checkpoint_sha256.values) == ["ab" * 32] * 2


def test_stack_different_architectures_pads_layers():
    a = per_checkpoint(1.0, layers=("bn", "blocks.0.bn1"))
    b = per_checkpoint(2.0, layers=("bn", "blocks.0.bn1", "blocks.1.bn1"), arch="cifar_resnet_14")
    ds = stack([a, b], ["r8", "r14"])
    assert list(ds.layer.values) == ["bn", "blocks.0.bn1", "blocks.1.bn1"]
    assert np.isnan(ds.gamma.sel(checkpoint="r8", layer="blocks.1.bn1")).all()
    assert ds.depth.dims == ("checkpoint", "layer")


def test_duplicate_labels_made_unique():
    ds = stack([per_checkpoint(1.0), per_checkpoint(2.0)], ["final", "final"])
    assert list(ds.checkpoint.values) == ["final", "final#2"]


def test_existing_output_refused_and_overwrite_replaces(tmp_path):
    path = save_result(stack([per_checkpoint(1.0)], ["a"]), tmp_path / "x.zarr")
    with pytest.raises(ResultExistsError, match="--overwrite"):
        save_result(stack([per_checkpoint(2.0)], ["a"]), path)
    save_result(stack([per_checkpoint(2.0)], ["a"]), path, overwrite=True)
    assert open_result(path).gamma.values.max() == 2.0
    assert sorted(os.listdir(tmp_path)) == ["x.zarr"]


def test_interrupted_save_leaves_previous_result_intact(tmp_path, monkeypatch):
    path = save_result(stack([per_checkpoint(1.0)], ["a"]), tmp_path / "x.zarr")

    def interrupted(self, store, *args, **kwargs):
        os.makedirs(store)
        open(os.path.join(store, "half-written"), "w").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_zarr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_result(stack([per_checkpoint(5.0)], ["a"]), path, overwrite=True)
    monkeypatch.undo()
    assert open_result(path).gamma.values.max() == 1.0
    assert sorted(os.listdir(tmp_path)) == ["x.zarr"]


def test_open_result_rejects_foreign_stores(tmp_path):
    with pytest.raises(RfprobeError, match="no such result"):
        open_result(tmp_path / "missing.zarr")
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "plain.zarr", zarr_format=2, consolidated=True)
    with pytest.raises(RfprobeError, match="not an rfprobe result"):
        open_result(tmp_path / "plain.zarr")


def test_nan_padded_pads_ragged_layers():
    from rfprobe.results import nan_padded

    out = nan_padded([np.array([1.0, 2.0]), np.array([3.0]), np.array([])])
    assert out.shape == (3, 2) and out[0].tolist() == [1.0, 2.0] and out[1, 0] == 3.0
    assert np.isnan(out[1, 1]) and np.isnan(out[2]).all()
    assert nan_padded([np.array([1.0])], width=3).shape == (1, 3)


def test_stack_of_stored_results_of_different_architectures(tmp_path):
    """Results read back from zarr (text as numpy StringDType) of two architectures stack: layers aligned on
    their union, text padded with "", numbers with NaN."""
    from rfprobe.checkpoint import load_checkpoint, save_checkpoint
    from rfprobe.models import build_model
    from rfprobe.passes import dead
    from rfprobe.results import open_result, save_result, stack

    stored = []
    for name in ("cifar_resnet_8_4", "cifar_resnet_14"):
        save_checkpoint(tmp_path / f"{name}.pt", build_model(name, 10, seed=0), mode="bn", dataset="synthetic", epoch=1)
        ds = dead.run_checkpoint(load_checkpoint(tmp_path / f"{name}.pt"))
        save_result(stack([ds], [name]), tmp_path / f"{name}.zarr")
        stored.append(open_result(tmp_path / f"{name}.zarr").isel(checkpoint=0, drop=True))
    both = stack(stored, ["small", "deep"])
    roles = both["role"].sel(checkpoint="small").values
    channels = np.asarray(both["n_channels"].sel(checkpoint="small").values, float)
    union = set(stored[0]["layer"].values) | set(stored[1]["layer"].values)
    assert both.sizes["layer"] == len(union) == 16  # ResNet-8's first shortcut is in block 1, ResNet-14's in 2
    assert (roles == "").sum() == 16 - 9 and np.isnan(channels).sum() == 16 - 9
    assert (both["role"].sel(checkpoint="deep").values == "").sum() == 1
    save_result(both, tmp_path / "both.zarr")  # written again without the stores' on-disk dtypes
    xr.testing.assert_identical(open_result(tmp_path / "both.zarr").drop_attrs(), both.drop_attrs())
