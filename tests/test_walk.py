"""The incremental region walk against the plain walk (autodiff, one evaluation per region) and dense sampling.

Contract: the same breakpoints, counted alike, each within 1e-9 in t, on a CIFAR ResNet-8 (projection
shortcuts), a pre-activation ResNet (a 1x1 shortcut conv of the block's pre-activation), an MLP, a VGG-style
net with average pooling and a net with max-pooling (a ResNet stem: conv-BN-ReLU-MaxPool(3, 2, 1), whose windows
tie at ReLU zeros, a residual block, then a functional 2x2 max-pool straight after a conv); and each crossing
counted once where the plain walk counts a crossing twice."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_walk import plain_walk
from rfprobe.geometry.dual import Program
from rfprobe.geometry import Tangent, walk
from rfprobe.models import build_model
from test_geometry import check_walk_against_sampling, randomise_bn

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]


class AvgPoolVGG(nn.Module):
    """conv-BN-ReLU x2, 2x2 average pool, conv-BN-ReLU, 2x2 average pool, linear: a VGG without max pooling."""

    def __init__(self, size: int = 8):
        super().__init__()
        def block(f_in, f_out):
            return nn.Sequential(nn.Conv2d(f_in, f_out, 3, padding=1, bias=False), nn.BatchNorm2d(f_out), nn.ReLU())
        self.features = nn.Sequential(block(3, 6), block(6, 6), nn.AvgPool2d(2), block(6, 8), nn.AvgPool2d(2))
        self.fc = nn.Linear(8 * (size // 4) ** 2, 10)
        self.rfprobe_input_shape = (3, size, size)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class MaxPoolStem(nn.Module):
    """conv-BN-ReLU, MaxPool2d(3, 2, 1) (torchvision's ResNet stem), a residual conv-BN block with ReLU after the
    addition, a conv straight into a functional 2x2 max-pool (no ReLU before it), linear."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * (size // 4) ** 2, 10)
        self.rfprobe_input_shape = (3, size, size)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = F.relu(x + self.bn2(self.conv2(x)))
        return self.fc(F.max_pool2d(self.conv3(x), 2).flatten(1))


class TwoEntryPool(nn.Module):
    """One 1x2 max-pool window over the input (x_1, x_2), then fc (weight 1, bias 5: its ReLU stays on for inputs
    above -5), ReLU, out: the only pool boundary is the line x_1 = x_2."""

    def __init__(self):
        super().__init__()
        self.pool, self.fc, self.out = nn.MaxPool2d((1, 2)), nn.Linear(1, 1), nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(5.0)
        self.rfprobe_input_shape = (1, 1, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.pool(x).flatten(1))))


MODELS = {"avgpool_vgg": AvgPoolVGG, "maxpool_stem": MaxPoolStem}


def tangent(name: str, size: int | None = None) -> Tangent:
    torch.manual_seed(0)
    model = MODELS[name]() if name in MODELS else build_model(name, seed=0)
    randomise_bn(model, seed=1)
    if size is not None:
        model.rfprobe_input_shape = (3, size, size)
    return Tangent.from_model(model)


CASES = {
    "cifar_resnet_8": (None, 0.03, 2),
    "cifar_preact_resnet_8": (16, 0.3, 2),
    "mlp_3x32": (None, 6.0, 4),
    "avgpool_vgg": (None, 2.0, 3),
    "maxpool_stem": (None, 1.0, 3),
}


@pytest.mark.parametrize("name", CASES)
def test_walk_equals_plain_walk(name):
    size, scale, n = CASES[name]
    tf = tangent(name, size)
    g = torch.Generator().manual_seed(2)
    a = torch.randn((n, *tf.input_shape), generator=g, dtype=torch.float64)
    b = a + scale * torch.randn(a.shape, generator=g, dtype=torch.float64)
    found = walk(tf, a, b)
    expected = plain_walk(tf, a, b)
    assert sum(len(t) for t in expected) > 20 * n
    for got, want in zip(found.t, expected):
        assert len(got) == len(want)
        assert np.abs(got - want).max() <= 1e-9
    assert found.evaluations < sum(len(t) for t in expected) / 4


def test_walk_is_the_same_with_a_full_evaluation_at_every_crossing():
    tf = tangent("cifar_resnet_8")
    g = torch.Generator().manual_seed(3)
    a = torch.randn((1, *tf.input_shape), generator=g, dtype=torch.float64)
    b = a + 0.05 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    incremental, full = walk(tf, a, b, refresh=10 ** 9), walk(tf, a, b, refresh=1)
    assert full.evaluations == len(full.t[0]) + 1 > 100
    assert incremental.evaluations < 10
    assert len(incremental.t[0]) == len(full.t[0])
    assert np.abs(incremental.t[0] - full.t[0]).max() <= 1e-9
    np.testing.assert_array_equal(incremental.layer[0], full.layer[0])


@pytest.mark.parametrize("name", ["avgpool_vgg", "cifar_preact_resnet_8", "maxpool_stem"])
def test_walk_equals_dense_sampling(name):
    tf = tangent(name, 8)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(tf.input_shape, generator=g)
    n_walk, n_sampled = check_walk_against_sampling(tf, a, a + 0.5 * torch.randn(a.shape, generator=g), 20_001)
    assert n_walk >= n_sampled > 5


def test_each_crossing_counted_once_where_rounding_repeats_it():
    """z = 0.7 x - 0.91 crossed by segments so short that z(t* + 1e-9) is below rounding: the plain walk
    sometimes finds the same crossing again just after it; the walk counts one crossing on every segment."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.fill_(0.7)
        net[0].bias.fill_(-0.7 * 1.3)
    net.rfprobe_input_shape = (1,)
    tf = Tangent.from_model(net)
    rng = np.random.default_rng(0)
    plain_counts = []
    for _ in range(100):
        h = 10 ** rng.uniform(-9, -6)
        c = 1.3 + h * rng.uniform(-0.9, 0.9)
        a, b = torch.tensor([[c - h]], dtype=torch.float64), torch.tensor([[c + h]], dtype=torch.float64)
        assert len(walk(tf, a, b).t[0]) == 1
        assert len(walk(tf, a, b, refresh=1).t[0]) == 1
        plain_counts.append(len(plain_walk(tf, a, b)[0]))
    assert max(plain_counts) == 2


@pytest.mark.parametrize("name", ["cifar_resnet_8", "cifar_preact_resnet_8", "avgpool_vgg", "mlp_3x32",
                                  "maxpool_stem"])
def test_dual_forward_equals_autodiff(name):
    tf = tangent(name, 16 if "resnet" in name else None)
    g = torch.Generator().manual_seed(5)
    x = torch.randn((2, *tf.input_shape), generator=g, dtype=torch.float64)
    v = torch.randn((6, *tf.input_shape), generator=g, dtype=torch.float64)
    zs, dzs = tf.jvp(x, v)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        (_, want_z, _), (_, want_dz, _) = torch.func.jvp(tf.net, (x.repeat_interleave(3, 0),), (v,))
    for z, dz, wz, wdz in zip(zs, dzs, want_z, want_dz):
        torch.testing.assert_close(z, wz.flatten(1)[::3], rtol=0, atol=1e-12)
        torch.testing.assert_close(dz, wdz.flatten(1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, layer", [("cifar_resnet_8", 0), ("cifar_resnet_8", 2), ("cifar_preact_resnet_8", 1),
                                         ("avgpool_vgg", 0)])
def test_cropped_response_equals_a_dense_forward(name, layer):
    """Program.response (boxes, cropped convolutions) equals the dual forward of a zero direction with
    `delta` added to the unit's post-activation on the direction row: the linearised network run densely."""
    tf = tangent(name, 16 if "resnet" in name else None)
    program: Program = tf.program
    g = torch.Generator().manual_seed(6)
    x = torch.randn((1, *tf.input_shape), generator=g, dtype=torch.float64)
    zs, _ = tf.jvp(x, torch.zeros_like(x))
    masks = [(z[0] > 0).double().view(l.shape) for z, l in zip(zs, tf.layers)]
    relu = next(s for s in program.steps if getattr(s, "layer", None) == layer)
    c, h, w = tf.layers[layer].shape
    for unit in (0, (c // 2 * h + h - 1) * w + w // 2, c * h * w - 1):
        changes = {j: (change.dense() if hasattr(change, "dense") else change)[0].flatten()
                   for j, change in program.response(layer, unit, 2.5, masks)}
        dual = relu.dual

        def kicked(args, kwargs, points, tensors, dual=dual, unit=unit):
            out = dual(args, kwargs, points, tensors)
            out[points:].view(-1)[unit] += 2.5
            return out

        relu.dual = kicked
        try:
            _, dense = tf.jvp(x, torch.zeros_like(x))
        finally:
            relu.dual = dual
        assert set(changes) <= set(range(layer + 1, len(tf.layers)))
        for j in range(layer + 1, len(tf.layers)):
            want = dense[j][0]
            got = changes.get(j, torch.zeros_like(want))
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert any(float(dense[j].abs().max()) > 0 for j in range(layer + 1, len(tf.layers)))


def test_max_pool_crossings_are_found_where_windows_tie_at_relu_zeros():
    """Argmax changes are breakpoints of their own: on the stem both pool layers count crossings. With the stem's BN
    shifted down (beta -2.5) most of its ReLUs are off, so most stem windows tie at 0 and are overtaken at the very
    t* where an entry's ReLU turns on (one breakpoint, the ReLU's); the walk still equals the plain walk."""
    tf = tangent("maxpool_stem")
    g = torch.Generator().manual_seed(8)
    a = torch.randn((2, *tf.input_shape), generator=g, dtype=torch.float64)
    found = walk(tf, a, a + torch.randn(a.shape, generator=g, dtype=torch.float64))
    assert np.isin([1, 3], np.concatenate(found.layer)).all()
    torch.manual_seed(0)
    model = randomise_bn(MaxPoolStem(), seed=1)
    with torch.no_grad():
        model.bn.bias.fill_(-2.5)
    tf = Tangent.from_model(model)
    pools = [i for i, layer in enumerate(tf.layers) if layer.is_pool]
    assert [tf.layers[i].site.kind for i in pools] == ["maxpool", "maxpool"]
    g = torch.Generator().manual_seed(8)
    a = torch.randn((3, *tf.input_shape), generator=g, dtype=torch.float64)
    b = a + 2 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    _, zs = tf.forward(a)
    assert float((zs[0] <= 0).double().mean()) > 0.8
    _, zb = tf.forward(b)
    assert ((zs[1] > 0) != (zb[1] > 0)).any(1).all(), "the stem's argmax pattern changes along every segment"
    found, expected = walk(tf, a, b), plain_walk(tf, a, b)
    assert sum(len(t) for t in expected) > 20
    for got, want in zip(found.t, expected):
        assert len(got) == len(want)
        assert np.abs(got - want).max() <= 1e-9


def test_each_max_pool_crossing_counted_once_where_rounding_repeats_it():
    """Two entries of one max-pool window, x_1 and 1.3, swap argmax on segments so short that the pair unit at
    t* + 1e-9 is below rounding: the walk counts one crossing on every segment."""
    tf = Tangent.from_model(TwoEntryPool().double())
    rng = np.random.default_rng(0)
    for _ in range(100):
        h = 10 ** rng.uniform(-9, -6)
        c = 1.3 + h * rng.uniform(-0.9, 0.9)
        a = torch.tensor([[[[c - h, 1.3]]]], dtype=torch.float64)
        b = torch.tensor([[[[c + h, 1.3]]]], dtype=torch.float64)
        for refresh in (256, 1):
            result = walk(tf, a, b, refresh=refresh)
            assert len(result.t[0]) == 1 and result.layer[0][0] == 0


def test_cropped_response_from_a_max_pool_equals_a_dense_forward():
    """Program.response from a pair unit of the stem's max-pool (its window's output kicked by `delta`) equals the
    dual forward of a zero direction with `delta` added to that window's output on the direction row."""
    tf = tangent("maxpool_stem")
    program: Program = tf.program
    layer = next(i for i, l in enumerate(tf.layers) if l.is_pool)
    g = torch.Generator().manual_seed(6)
    x = torch.randn((1, *tf.input_shape), generator=g, dtype=torch.float64)
    zs, _ = tf.jvp(x, torch.zeros_like(x))
    masks = [(z[0] > 0).double().view(l.shape) for z, l in zip(zs, tf.layers)]
    pool = program.layer_steps[layer]
    c, h, w, k = tf.layers[layer].shape
    for unit in (0, ((c // 2 * h + h - 1) * w + w // 2) * k + 4, c * h * w * k - 1):
        changes = {j: (change.dense() if hasattr(change, "dense") else change)[0].flatten()
                   for j, change in program.response(layer, unit, 2.5, masks)}
        dual = pool.dual

        def kicked(args, kwargs, points, tensors, dual=dual, unit=unit):
            out = dual(args, kwargs, points, tensors)
            out[points:].view(-1)[unit // k] += 2.5
            return out

        pool.dual = kicked
        try:
            _, dense = tf.jvp(x, torch.zeros_like(x))
        finally:
            pool.dual = dual
        for j in range(layer + 1, len(tf.layers)):
            torch.testing.assert_close(changes.get(j, torch.zeros_like(dense[j][0])), dense[j][0], rtol=1e-12, atol=1e-12)
        assert any(float(dense[j].abs().max()) > 0 for j in range(layer + 1, len(tf.layers)))


class ConstantAdds(nn.Module):
    """A ReLU net that adds a number and a buffer to its pre-activations: constants belong to the point's
    rows only (a direction's derivative has no offset)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.register_buffer("offset", torch.linspace(-1, 1, 8))
        self.rfprobe_input_shape = (3,)

    def forward(self, x):
        h = torch.relu(0.25 + self.fc1(x))
        return self.out(torch.relu(self.fc2(h) + self.offset))


def test_constants_are_added_to_points_not_directions():
    torch.manual_seed(0)
    tf = Tangent.from_model(ConstantAdds())
    g = torch.Generator().manual_seed(8)
    x = torch.randn((3, 3), generator=g, dtype=torch.float64)
    v = torch.randn((6, 3), generator=g, dtype=torch.float64)
    zs, dzs = tf.jvp(x, v)
    with torch.no_grad():
        (_, want_z, _), (_, want_dz, _) = torch.func.jvp(tf.net, (x.repeat_interleave(2, 0),), (v,))
    for z, dz, wz, wdz in zip(zs, dzs, want_z, want_dz):
        torch.testing.assert_close(z, wz[::2], rtol=0, atol=1e-12)
        torch.testing.assert_close(dz, wdz, rtol=0, atol=1e-12)
    a, b = x[:1], x[:1] + 8 * v[:1]
    assert len(walk(tf, a, b).t[0]) == len(plain_walk(tf, a, b)[0]) > 2
