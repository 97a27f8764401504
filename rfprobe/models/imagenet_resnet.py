"""OpenLTH's ImageNet ResNets (`imagenet_resnet_D[_W]`): torchvision's ResNet layout and module names (so OpenLTH's
ImageNet state dicts, whose keys are torchvision's behind a `model.` prefix, load as they are), with the
first-stage width W (default 64) as OpenLTH varies it, and OpenLTH's initialisation (`init_openlth_`).

Stem conv7x7/2-BN-ReLU-MaxPool3x3/2; four stages of basic (18, 34) or bottleneck (50 and deeper) blocks of widths
W, 2W, 4W, 8W; global average pool; `fc`. With W = 64 the modules and shapes are torchvision's `resnet{D}`.
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

STAGES = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
          101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3)), 200: (Bottleneck, (3, 24, 36, 3))}
"""blocks per stage of each depth OpenLTH builds"""


class ImageNetResNet(ResNet):
    """torchvision's ResNet with every stage's width scaled to a first-stage width `width` (torchvision's
    constructor fixes it at 64; its `_make_layer` builds the stages from `self.inplanes`)."""

    def __init__(self, depth: int, width: int = 64, num_classes: int = 1000):
        if depth not in STAGES:
            raise ValueError(f"imagenet_resnet depth must be one of {', '.join(map(str, STAGES))}, got {depth}")
        block, layers = STAGES[depth]
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
