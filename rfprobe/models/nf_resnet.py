"""Normalizer-free CIFAR ResNets (Brock, De, Smith 2021); compare with `preact_resnet` (the BN version).

`NFResNet` keeps the layout of `cifar_resnet_N_W` (stem conv3x3; three stages of (N-2)/6 basic blocks of
widths W, 2W, 4W; a 1x1 stride-2 projection shortcut at the first block of stages 2 and 3; global average
pool; `fc`) with no BatchNorm. Block i computes

    h_{i+1} = shortcut(h_i) + alpha * g * f_i(h_i / beta_i),   f_i(u) = conv2(act(conv1(act(u))))

with `act(x) = gamma * relu(x)`, `g` a learnable scalar skip gain (SkipInit, initialised to 0), and
`beta_i = sqrt(Var(h_i))` the analytic expected variance: Var(h_0) = 1, Var(h_{i+1}) = Var(h_i) + alpha^2,
reset to 1 + alpha^2 after a transition block, whose shortcut is the 1x1 conv of `act(h_i / beta_i)`.
Convs are Scaled-WS convs (`ScaledStdConv2d`) with gamma = sqrt(2 / (1 - 1/pi)); the He-init variant
uses plain convs (kaiming-normal, fan-in, ReLU gain) and gamma = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GAMMA_RELU = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
"""1.7128585...: makes Var(gamma * relu(z)) = 1 for z ~ N(0, 1) (the official code uses 1.7139588594436646)"""


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with Scaled Weight Standardization: the weight used is

        W_hat[o] = gain[o] * (W[o] - mean(W[o])) / sqrt(N * var(W[o]) + eps)

    with the mean and (biased) variance over the fan-in N = k_h * k_w * C_in / groups of output channel o,
    so each W_hat[o] has zero mean and variance gain[o]^2 / N (up to eps). `gain` starts at 1, `bias` at 0;
    eps sits inside the square root, so a constant filter gives 0, never NaN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, eps: float = 1e-4):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.eps = float(eps)
        self.fan_in = self.weight[0].numel()
        nn.init.kaiming_normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def standardized_weight(self) -> torch.Tensor:
        flat = self.weight.flatten(1)
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
        scale = torch.rsqrt(var * self.fan_in + self.eps) * self.gain.unsqueeze(1)
        return ((flat - mean) * scale).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def _plain_conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
    nn.init.kaiming_normal_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class NFBlock(nn.Module):
    """`shortcut + alpha * skip_gain * conv2(act(conv1(act(x / beta))))`; the shortcut is `x`, or for a
    transition block the 1x1 conv of `act(x / beta)`."""

    def __init__(self, f_in: int, f_out: int, *, downsample: bool, alpha: float, beta: float, gamma: float,
                 skip_init_gain: float, conv=ScaledStdConv2d):
        super().__init__()
        stride = 2 if downsample else 1
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.conv1 = conv(f_in, f_out, 3, stride=stride, padding=1)
        self.conv2 = conv(f_out, f_out, 3, stride=1, padding=1)
        self.shortcut = conv(f_in, f_out, 1, stride=stride) if downsample or f_in != f_out else None
        self.skip_gain = nn.Parameter(torch.tensor(float(skip_init_gain)))

    def forward(self, x):
        out = F.relu(x / self.beta) * self.gamma
        shortcut = x if self.shortcut is None else self.shortcut(out)
        branch = self.conv2(F.relu(self.conv1(out)) * self.gamma)
        return shortcut + branch * (self.skip_gain * self.alpha)


class NFResNet(nn.Module):
    """The CIFAR NF-ResNet (module docstring). `expected_variance[i]` is the analytic Var(h_i) the betas are
    built from (index 0: the stem output; i >= 1: after block i - 1), assuming skip gain 1."""

    def __init__(self, depth: int, width: int = 16, num_classes: int = 10, *, alpha: float = 0.2,
                 skip_init_gain: float = 0.0, dropout: float = 0.0, standardize: bool = True):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        conv = ScaledStdConv2d if standardize else _plain_conv
        gamma = GAMMA_RELU if standardize else 1.0
        self.alpha, self.gamma, self.standardize = float(alpha), gamma, standardize
        blocks_per_stage = (depth - 2) // 6
        self.conv = conv(3, width, 3, stride=1, padding=1)
        expected = [1.0]
        blocks, current = [], width
        for stage in range(3):
            filters = width * 2 ** stage
            for index in range(blocks_per_stage):
                downsample = stage > 0 and index == 0
                blocks.append(NFBlock(current, filters, downsample=downsample, alpha=alpha,
                                      beta=math.sqrt(expected[-1]), gamma=gamma, skip_init_gain=skip_init_gain, conv=conv))
                transition = blocks[-1].shortcut is not None
                expected.append((1.0 if transition else expected[-1]) + alpha ** 2)
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.expected_variance = tuple(expected)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(current, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        out = self.blocks(self.conv(x))
        out = F.relu(out) * self.gamma
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(self.dropout(out))
