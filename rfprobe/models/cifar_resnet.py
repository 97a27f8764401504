"""OpenLTH's CIFAR ResNet (`cifar_resnet_N[_W]`), module names included, so its state dicts load as they are.

Stem conv3x3-BN-ReLU; three stages of (N-2)/6 basic blocks of widths W, 2W, 4W; a 1x1 stride-2 conv + BN
projection shortcut at the first block of stages 2 and 3 ("option B"); global average pool; `fc`.
"""

import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, f_in: int, f_out: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=2 if downsample else 1, bias=False),
                nn.BatchNorm2d(f_out),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, width: int = 16, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"cifar_resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        plan = [(width, blocks_per_stage), (2 * width, blocks_per_stage), (4 * width, blocks_per_stage)]
        current = width
        self.conv = nn.Conv2d(3, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(current)
        blocks = []
        for stage, (filters, n) in enumerate(plan):
            for index in range(n):
                blocks.append(Block(current, filters, downsample=stage > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.flatten(1)
        return self.fc(out)
