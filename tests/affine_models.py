"""Models whose BN gammas and betas the tests set by hand (shared by test_affine.py and test_dead.py)."""

import torch

from rfprobe.models import build_model

# cifar_resnet_8_4 in forward order: (name, channels, role), written out by hand from the architecture.
RESNET8_4 = [("bn", 4, "relu"), ("blocks.0.bn1", 4, "relu"), ("blocks.0.bn2", 4, "residual"),
             ("blocks.1.bn1", 8, "relu"), ("blocks.1.bn2", 8, "residual"), ("blocks.1.shortcut.1", 8, "shortcut"),
             ("blocks.2.bn1", 16, "relu"), ("blocks.2.bn2", 16, "residual"), ("blocks.2.shortcut.1", 16, "shortcut")]

# exactly representable in float32, so |gamma| < t is decided without rounding doubts
GAMMAS = [0.0, 0.0009765625, -0.0078125, 0.03125, -0.0625, 0.25, 0.5, -1.0, 0.5, -0.001953125, 0.125, 2.0]
BETAS = [0.0, -1.0, 1.0, -0.125, 0.5, -0.25, 0.0, 0.0, 0.25, -0.5, 0.0, 0.75]


def hand_values(layer: int, n: int) -> tuple[list[float], list[float]]:
    """Layer `layer`'s gammas and betas: the lists above rotated by `3 * layer`, cut to `n` channels."""
    k = 3 * layer
    rot = lambda values: [values[(i + k) % len(values)] for i in range(n)]  # noqa: E731
    return rot(GAMMAS), rot(BETAS)


def hand_set_resnet(seed: int = 0, scale: float = 1.0):
    """cifar_resnet_8_4 with every BN's gamma/beta from `hand_values` (gammas times `scale`)."""
    model = build_model("cifar_resnet_8_4", seed=seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, (name, n, _) in enumerate(RESNET8_4):
            gamma, beta = hand_values(i, n)
            modules[name].weight.copy_(torch.tensor(gamma) * scale)
            modules[name].bias.copy_(torch.tensor(beta))
    return model
