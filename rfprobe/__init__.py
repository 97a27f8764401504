"""rfprobe: analysis passes over BatchNorm / random-feature checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rfprobe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"


def open_study(path):
    """The study written by `rfprobe compare --out DIR` (DIR or DIR/study.zarr), as an xarray DataTree."""
    from rfprobe.study import open_study as _open

    return _open(path)
