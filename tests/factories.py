"""Model factories of "a user's own code", named in tests as `tests.factories:<name>` (`--arch`)."""

import torch.nn as nn
import torchvision


class TinyNet(nn.Module):
    """conv-GroupNorm-ReLU, a residual block with a LayerNorm2d-style channel norm (GroupNorm(1)), pooled, a
    LayerNorm over features and a GELU before the classifier: several norm and activation kinds in 2k weights."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.norm0 = nn.GroupNorm(2, width)
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(1, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(width, 2 * width)
        self.ln = nn.LayerNorm(2 * width)
        self.act = nn.GELU()
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = nn.functional.relu(self.norm0(self.stem(x)))
        x = nn.functional.relu(x + self.norm1(self.conv(x)))
        x = self.pool(x).flatten(1)
        return self.head(self.act(self.ln(self.fc1(x))))


def make_net(num_classes: int = 10, width: int = 8) -> nn.Module:
    model = TinyNet(num_classes, width)
    model.rfprobe_input_shape = (3, 32, 32)
    return model


def resnet18_gn(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with GroupNorm(2, C) in place of every BatchNorm."""
    return torchvision.models.resnet18(num_classes=num_classes, norm_layer=lambda c: nn.GroupNorm(2, c))


def resnet18_frozen(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with FrozenBatchNorm2d (gamma/beta are buffers)."""
    return torchvision.models.resnet18(num_classes=num_classes, norm_layer=torchvision.ops.FrozenBatchNorm2d)
