"""A pre-activation (BN-ReLU-conv, ResNetV2 order) CIFAR ResNet in the `cifar_resnet_N_W` layout: the BN
network the normalizer-free ResNets (`nf_resnet`) are compared with in signal propagation plots."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (ResNetV2 order, no ReLU after the addition); a
    transition block's shortcut is the 1x1 stride-2 conv of the block's pre-activation `relu(bn1(x))`."""

    def __init__(self, f_in: int, f_out: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.bn1 = nn.BatchNorm2d(f_in)
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False)
                         if downsample or f_in != f_out else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation CIFAR ResNet: stem conv3x3; the blocks of `cifar_resnet_N_W` in `PreActBlock` order;
    final BN-ReLU; global average pool; `fc`."""

    def __init__(self, depth: int, width: int = 16, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        blocks, current = [], width
        for stage in range(3):
            filters = width * 2 ** stage
            for index in range(blocks_per_stage):
                blocks.append(PreActBlock(current, filters, downsample=stage > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(current)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x):
        out = self.blocks(self.conv(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
