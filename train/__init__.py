"""The rfprobe trainer: `python -m train ARCH --mode MODE ...` writes rfprobe checkpoints (see docs/trainer.md).

It imports rfprobe; rfprobe never imports it. `train(Config(...))` is the same run from Python.
"""

from train.config import Config
from train.run import train

__all__ = ["Config", "train"]
