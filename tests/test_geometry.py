"""The tangent forward and the exact geometry against brute force (dense sampling, grids, autograd, hand-folded BN)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_within_ulps
from rfprobe.errors import RfprobeError
from rfprobe.geometry import (Tangent, exact_distance, gradient_norms, hutchinson_norms, slice_partition, tile_basis,
                              walk)
from rfprobe.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_bn(model, seed=0):
    """BN statistics and beta away from their defaults, so boundaries do not all pass through 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(m.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def mlp():
    return Tangent.from_model(randomise_bn(build_model("mlp_2x8", 2, seed=0)))


def small_resnet() -> Tangent:
    """A cifar_resnet_8_2 on 8x8 inputs with BN statistics and beta away from their defaults."""
    model = randomise_bn(build_model("cifar_resnet_8_2", seed=0), seed=1)
    model.rfprobe_input_shape = (3, 8, 8)
    return Tangent.from_model(model)


@pytest.fixture(scope="module")
def resnet():
    return small_resnet()


def check_walk_against_sampling(tf, a, b, samples):
    """Every sign change between consecutive samples has a walk breakpoint in that interval, and the
    pattern is constant between consecutive breakpoints. Returns (walk breakpoints, sampled changes)."""
    found = walk(tf, a[None], b[None]).t[0]
    t = torch.linspace(0, 1, samples, dtype=torch.float64)
    signs = tf.signs(a.double().flatten()[None] + t[:, None] * (b - a).double().flatten()[None], batch=4096)
    changed = (signs[1:] != signs[:-1]).any(1).nonzero().flatten().numpy()
    t = t.numpy()
    for i in changed:
        assert ((found >= t[i]) & (found <= t[i + 1])).any(), f"sampled change in [{t[i]}, {t[i + 1]}] missed by the walk"
    edges = np.concatenate([[0.0], found, [1.0]])
    region = np.searchsorted(edges, t, side="right") - 1
    for r in np.unique(region):
        inside = signs[region == r]
        assert (inside == inside[0]).all(), f"pattern not constant between breakpoints {edges[r]} and {edges[r + 1]}"
    assert np.all(np.diff(found) > 0)
    return len(found), len(changed)


def test_walk_equals_dense_sampling_mlp(mlp):
    g = torch.Generator().manual_seed(1)
    total_walk = total_sampled = 0
    for _ in range(4):
        a, b = 2 * torch.randn(2, 2, generator=g, dtype=torch.float64)
        n_walk, n_sampled = check_walk_against_sampling(mlp, a, b, 100_001)
        total_walk, total_sampled = total_walk + n_walk, total_sampled + n_sampled
    assert total_walk == total_sampled > 10


def test_walk_equals_dense_sampling_resnet(resnet):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    n_walk, n_sampled = check_walk_against_sampling(resnet, a, b, 20_001)
    assert n_walk >= n_sampled > 5


def test_batched_walk_equals_one_at_a_time(mlp):
    g = torch.Generator().manual_seed(3)
    a, b = 2 * torch.randn(2, 7, 2, generator=g, dtype=torch.float64)
    together = walk(mlp, a, b)
    for i in range(7):
        alone = walk(mlp, a[i:i + 1], b[i:i + 1])
        assert len(alone.t[0]) == len(together.t[i])
        np.testing.assert_allclose(alone.t[0], together.t[i], rtol=1e-12)  # matmul rounding depends on batch size
        np.testing.assert_array_equal(alone.layer[0], together.layer[i])
    np.testing.assert_allclose(together.length, (b - a).norm(dim=1).numpy())


def test_slice_region_count_equals_dense_grid(mlp):
    box = (-3.0, 3.0, -2.5, 2.5)
    found = slice_partition(mlp, torch.zeros(2), torch.eye(2), box)
    assert found.complete
    u = torch.linspace(box[0], box[1], 1500, dtype=torch.float64)
    v = torch.linspace(box[2], box[3], 1250, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, v, indexing="ij"), -1).reshape(-1, 2)
    keys = {np.packbits(row).tobytes() for row in mlp.signs(grid, batch=1 << 20).numpy()}
    assert keys <= set(found.patterns)
    assert len(found.polygons) == len(keys) > 10
    area = sum(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))) for p in found.polygons)
    assert area == pytest.approx(6.0 * 5.0, rel=1e-9)


def reverse_mode_unit(tf, x, layer, unit):
    x = x.double().clone().requires_grad_(True)
    _, zs, _ = tf.net(x[None])
    z = zs[layer].flatten()[unit]
    (grad,) = torch.autograd.grad(z, x)
    return z.item(), grad


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_exact_distance_by_stepping(name, request):
    tf = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        x = torch.randn(tf.input_shape, generator=g, dtype=torch.float64)
        found = exact_distance(tf, x, chunk=50)
        z, grad = reverse_mode_unit(tf, x, found.layer, found.layer_unit[found.layer])
        assert found.distance == pytest.approx(abs(z) / grad.norm().item(), rel=1e-10)
        normal = -np.sign(z) * grad / grad.norm()
        unit = tf.layers[found.layer].offset + found.layer_unit[found.layer]
        before = tf.signs(x[None])[0]
        short = tf.signs((x + 0.999 * found.distance * normal)[None])[0]
        past = tf.signs((x + 1.001 * found.distance * normal)[None])[0]
        assert (short == before).all()
        assert past[unit] != before[unit] and (past != before).sum() == 1


def test_gradient_norms_equal_autograd_jacobian(resnet):
    x = torch.randn(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z, norms = gradient_norms(resnet, x, chunk=37)
    jac = torch.autograd.functional.jacobian(lambda x: torch.cat([z.flatten() for z in resnet.net(x[None])[1]]), x)
    np.testing.assert_allclose(norms.numpy(), jac.flatten(1).norm(dim=1).numpy(), rtol=1e-10, atol=1e-12)
    est_z, est = hutchinson_norms(resnet, x[None], 512, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(est_z[0].numpy(), z.numpy())
    alive = norms > 0
    error = (est[0][alive] / norms[alive] - 1).abs().mean()
    assert 0.005 < error < 3 / np.sqrt(2 * 512)


def test_bn_folded_by_hand_equals_tangent(resnet):
    model = randomise_bn(build_model("mlp_2x8", 2, seed=0)).requires_grad_(False)
    tf = Tangent.from_model(model)
    x = torch.randn(5, 2, dtype=torch.float64)
    h, hand = x, []
    for layer in model.layers:
        bn = layer.bn
        w = layer.linear.weight.double()
        scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
        folded_w, folded_b = scale[:, None] * w, bn.bias.double() - scale * bn.running_mean.double()
        z = h @ folded_w.T + folded_b
        hand.append(z)
        h = z.clamp_min(0)
    _, zs = tf.forward(x)
    for a, b in zip(hand, zs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    # the first conv + BN of the ResNet, folded by hand
    conv, bn = resnet.layers[0].producer, resnet.layers[0].bn
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    hand = F.conv2d(images, conv.weight * scale[:, None, None, None], padding=1) + (bn.bias - scale * bn.running_mean)[None, :, None, None]
    np.testing.assert_allclose(resnet.forward(images)[1][0].numpy(), hand.flatten(1).numpy(), rtol=1e-12, atol=1e-12)


def test_in_place_relu_does_not_overwrite_pre_activations():
    model = nn.Sequential(nn.Linear(2, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    randomise_bn(model)
    model.rfprobe_input_shape = (2,)
    tf = Tangent.from_model(model.eval())
    x = torch.randn(50, 2, dtype=torch.float64)
    _, (z,) = tf.forward(x)
    expected = model.double()[:2](x)
    np.testing.assert_allclose(z.numpy(), expected.detach().numpy(), rtol=1e-12)
    assert (z < 0).any()
    assert model[2].inplace, "the caller's model must be left untouched"


def test_max_pools_it_cannot_follow_and_smooth_activations_are_refused():
    tf = Tangent.from_model(build_model("cifar_vgg_11"))
    assert [layer.site.kind for layer in tf.layers].count("maxpool") == 4
    for pool, reason in ((nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"), (nn.MaxPool2d(2, dilation=2), "dilation"),
                         (nn.AdaptiveMaxPool2d(1), "AdaptiveMaxPool2d")):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(2))
        model(torch.zeros(1, 3, 8, 8))
        model.rfprobe_input_shape = (3, 8, 8)
        with pytest.raises(RfprobeError, match=f"max pooling .* with {reason}"):
            Tangent.from_model(model)
    model = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2))
    model.rfprobe_input_shape = (2,)
    with pytest.raises(RfprobeError, match="GELU"):
        Tangent.from_model(model)


def test_batched_gradient_norms_equal_one_point_at_a_time(mlp):
    x = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    z, norms = gradient_norms(mlp, x, chunk=1)
    for i in range(9):
        z1, n1 = gradient_norms(mlp, x[i])
        np.testing.assert_allclose(z[i].numpy(), z1.numpy(), rtol=1e-12)
        np.testing.assert_allclose(norms[i].numpy(), n1.numpy(), rtol=1e-12)


@pytest.mark.slow
def test_slice_region_count_equals_dense_grid_resnet(resnet):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    origin = x[0].flatten()
    plane = torch.stack([x[1].flatten() - origin, x[2].flatten() - origin], 1)
    box = (-0.02, 0.02, -0.02, 0.02)
    found = slice_partition(resnet, origin, plane, box)
    u = torch.linspace(-0.02, 0.02, 350, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    keys = {np.packbits(row).tobytes() for row in resnet.signs(origin + grid @ plane.T, batch=8192).numpy()}
    assert found.complete and keys <= set(found.patterns) and len(found.polygons) == len(keys) > 10


def test_gradient_norms_sharing_the_point_equal_copies(mlp):
    """One dual forward of [x; e_1 .. e_c] gives the norms of c copies of x each with its e_i: the same products
    summed by matmuls of other batch sizes (another kernel path on some CPUs), so within 16 ulps of the scale."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn((2, *mlp.input_shape), generator=g, dtype=torch.float64)
    z, norms = gradient_norms(mlp, x, chunk=1)
    dim = int(np.prod(mlp.input_shape))
    sumsq = torch.zeros_like(norms)
    for i in range(dim):
        basis = torch.zeros((1, dim), dtype=torch.float64)
        basis[0, i] = 1
        zs, dzs = mlp.jvp(x, basis.repeat(2, 1))
        sumsq += torch.cat(dzs, 1).square()
    assert_within_ulps(norms, sumsq.sqrt(), 16)
    assert_within_ulps(z, torch.cat(zs, 1), 16)


@pytest.fixture(scope="module")
def stem():
    from test_walk import MaxPoolStem
    torch.manual_seed(0)
    return Tangent.from_model(randomise_bn(MaxPoolStem(), seed=1))


def test_max_pool_pair_units_have_autograd_gradients_and_slice_regions(stem):
    """A max-pool's pair units z_j = w_argmax - w_j: their exact gradient norms (cones through the pool) equal
    reverse-mode autodiff of the graph's pairs; the slice of a max-pool net finds every region a dense grid sees,
    tiles the box, has each polygon's pattern at its centre, and its regions differ in their argmax where no ReLU
    changes."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(stem.input_shape, generator=g, dtype=torch.float64)
    _, norms = gradient_norms(stem, x)
    pool = next(i for i, layer in enumerate(stem.layers) if layer.is_pool)
    layer = stem.layers[pool]
    units = (norms[layer.offset:layer.offset + layer.size] > 0).nonzero().flatten()
    assert len(units) > 20
    for unit in units[::max(1, len(units) // 8)].tolist():
        _, grad = reverse_mode_unit(stem, x, pool, unit)
        assert float(grad.norm()) == pytest.approx(float(norms[layer.offset + unit]), rel=1e-12)
    x3 = torch.randn(3, *stem.input_shape, generator=g, dtype=torch.float64)
    origin = x3[0].flatten()
    plane = torch.stack([x3[1].flatten() - origin, x3[2].flatten() - origin], 1)
    box = (-0.01, 0.01, -0.01, 0.01)
    found = slice_partition(stem, origin, plane, box)
    u = torch.linspace(box[0], box[1], 250, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    signs = stem.signs(origin + grid @ plane.T, batch=1 << 16).numpy()
    keys = {np.packbits(row).tobytes() for row in signs}
    assert found.complete and keys <= set(found.patterns) and len(keys) > 5
    area = sum(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))) for p in found.polygons)
    assert area == pytest.approx(0.02 ** 2, rel=1e-9)
    centres = torch.as_tensor(np.array([p.mean(0) for p in found.polygons]))
    inside = [np.packbits(row).tobytes() for row in stem.signs(origin + centres @ plane.T).numpy()]
    assert [found.patterns[key] for key in inside] == list(range(len(found.polygons)))
    relu_units = np.concatenate([np.arange(l.offset, l.offset + l.size) for l in stem.layers if not l.is_pool])
    relu_keys = {np.packbits(row[relu_units]).tobytes() for row in signs}
    assert len(relu_keys) < len(keys)


@pytest.mark.parametrize("tile", [1, 3])
def test_gradient_norms_through_cones_equal_dense_forwards(resnet, tile):
    """Image inputs: each tile's basis carried through its receptive-field cone gives the norms of dense dual
    forwards of the same basis vectors. The cone runs each conv on a cropped window, the dense forward on the
    whole image: different conv kernels (chosen per CPU), so the sums round differently; within 16 ulps of the
    scale (measured: under 1 ulp here with MKL_CBWR unset, COMPATIBLE, AVX2 and AVX512)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(resnet.input_shape, generator=g, dtype=torch.float64)
    z, norms = gradient_norms(resnet, x, tile=tile)
    _, height, width = resnet.input_shape
    sumsq = torch.zeros_like(norms)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            zs, dzs = resnet.jvp(x[None], tile_basis(resnet, y0, x0, tile).dense())
            sumsq += torch.cat(dzs, 1).square().sum(0)
    assert_within_ulps(norms, sumsq.sqrt(), 16)
    assert_within_ulps(z, torch.cat(zs, 1)[0], 16)
