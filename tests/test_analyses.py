"""Every script in analyses/ runs end to end at tiny settings (so none can rot): each writes its result
store(s) and figures, and the numbers in them are the quantities the script documents."""

import subprocess
import sys

import numpy as np
import xarray as xr

from conftest import REPO


def run_script(name, *args):
    done = subprocess.run([sys.executable, str(REPO / "analyses" / name), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_partition_smart_init_quick(tmp_path):
    run_script("partition_smart_init.py", "--quick", "--no-cnn", "--out", tmp_path / "r", "--figures", tmp_path / "f")
    ds = xr.open_zarr(tmp_path / "r" / "mlp.zarr").load()
    assert list(ds["condition"].values) == ["nobn", "bn-init", "bn-data"] and list(ds["where"].values) == ["near", "away"]
    assert (ds["breakpoint_density"] > 0).all() and (ds["distance"].values[np.isfinite(ds["distance"].values)] >= 0).all()
    # BN statistics from the data put the boundaries where the data is: denser near the data than away
    bn_data = ds["breakpoint_density"].sel(condition="bn-data").squeeze()
    assert float(bn_data.sel(where="near")) > float(bn_data.sel(where="away"))
    assert ds.attrs["rfprobe_pass"] == "partition_smart_init"
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "partition_smart_init_density.png", "partition_smart_init_distances.png", "partition_smart_init_slices.png"]


def test_spp_bn_vs_nf_small(tmp_path):
    out = run_script("spp_bn_vs_nf.py", "--depth", 14, "--batch", 8, "--border-resolution", 16,
                     "--out", tmp_path / "s.zarr", "--plot", tmp_path / "a.png", "--nf-plot", tmp_path / "b.png")
    ds = xr.open_zarr(tmp_path / "s.zarr").load()
    assert ds.sizes == {"checkpoint": 4, "block": 7} and ds.attrs["rfprobe_pass"] == "signal"
    assert np.isfinite(ds["variance"].values).all() and (ds["variance"] > 0).all()
    assert (tmp_path / "a.png").exists() and (tmp_path / "b.png").exists() and "result:" in out
