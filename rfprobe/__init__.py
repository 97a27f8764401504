"""rfprobe: analysis passes over BatchNorm / random-feature checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rfprobe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
