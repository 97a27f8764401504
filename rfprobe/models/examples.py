"""A model factory written the way a user's own is (`--arch rfprobe.models.examples:norm_zoo_net`): a function
that returns an `nn.Module`, takes `num_classes` and keyword arguments, and states its input shape. Its net holds
one normalisation layer of most kinds and several activation kinds, for trying the passes on all of them."""

import torch.nn as nn
import torch.nn.functional as F


class NormZooNet(nn.Module):
    """conv-BN-ReLU, conv-GroupNorm-SiLU, a residual conv-InstanceNorm branch, channels-last LayerNorm-Linear-GELU
    on the pixels (a ConvNeXt block's layout), pooled, then LayerNorm and RMSNorm on features, a ReLU6, the head."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.gn = nn.GroupNorm(2, width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.inorm = nn.InstanceNorm2d(width, affine=True)
        self.ln_pixels = nn.LayerNorm(width)
        self.pw = nn.Linear(width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.ln = nn.LayerNorm(2 * width)
        self.fc = nn.Linear(2 * width, 2 * width)
        self.rms = nn.RMSNorm(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.silu(self.gn(self.conv2(x)))
        x = x + self.inorm(self.conv3(x))
        x = F.gelu(self.pw(self.ln_pixels(x.permute(0, 2, 3, 1))))  # (N, H, W, 2C): channels last
        x = self.pool(x.permute(0, 3, 1, 2)).flatten(1)
        x = F.relu6(self.fc(self.ln(x)))
        return self.head(self.rms(x))


def norm_zoo_net(num_classes: int = 10, width: int = 8) -> nn.Module:
    model = NormZooNet(num_classes, width)
    model.rfprobe_input_shape = (3, 32, 32)
    return model
