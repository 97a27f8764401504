"""OpenLTH's CIFAR VGG with BatchNorm (`cifar_vgg_{11,13,16,19}`): conv3x3(+bias)-BN-ReLU modules named
`layers.{i}.conv/bn`, 2x2 max-pools between groups, a final 2x2 average pool and `fc` (512 -> classes)."""

import torch.nn as nn
import torch.nn.functional as F

PLANS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class ConvModule(nn.Module):
    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth not in PLANS:
            raise ValueError(f"cifar_vgg depth must be one of {sorted(PLANS)}, got {depth}")
        layers, filters = [], 3
        for spec in PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(filters, spec))
                filters = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x):
        x = self.layers(x)
        x = F.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))
