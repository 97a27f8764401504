"""Random crop with zero padding + horizontal flip, for a whole batch at once on its device.

Equivalent, image by image, to torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip()` on the
uint8 image: pad with zeros (black), take the 32x32 window at (top, left) in [0, 2*pad]^2, mirror it when
`flip`. The draws come from a `torch.Generator`, so a saved generator state replays them exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` crop offsets top, left ~ U{0..2*pad} and flips ~ Bernoulli(1/2), on the generator's device."""
    device = generator.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return top, left, flip


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """out[n, c, r, s] = padded[n, c, top[n] + r, left[n] + (W-1-s if flip[n] else s)], one gather for the batch.

    The result is NCHW in shape with channels-last strides (the gather puts channels innermost)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = top[:, None] + torch.arange(h, device=x.device)
    across = torch.arange(w, device=x.device)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - across, across)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
