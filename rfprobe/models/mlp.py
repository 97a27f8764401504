"""`mlp_DxW`: D hidden layers of width W, each Linear(no bias)-BN-ReLU (BN's beta is the bias), then `fc`.
Meant for 2-D toy data and exact partition studies."""

import torch.nn as nn
import torch.nn.functional as F


class HiddenLayer(nn.Module):
    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.linear = nn.Linear(f_in, f_out, bias=False)
        self.bn = nn.BatchNorm1d(f_out)

    def forward(self, x):
        return F.relu(self.bn(self.linear(x)))


class MLP(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int = 2, in_features: int = 2):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"mlp needs depth >= 1 and width >= 1, got {depth}x{width}")
        sizes = [in_features] + [width] * depth
        self.layers = nn.Sequential(*[HiddenLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.layers(x.flatten(1)))
