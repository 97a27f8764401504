"""The faster partition stages against the slower computations they replace, kept here as oracles: the slice's
polygons against the full scan of every unit, Hutchinson's float32 directions against the float64 dual forward,
walks in worker processes against the walk in this process, truncated segments' density against the part walked."""

import json
import pickle

import numpy as np
import pytest
import torch

import rfprobe.geometry.slices as slices
from rfprobe.data import load_dataset
from rfprobe.geometry import hutchinson_norms, slice_partition, walk
from rfprobe.models import build_model
from rfprobe.passes.partition import compute
from test_geometry import randomise_bn, small_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet():
    return small_resnet()


def full_scan_polygon(box, z, grad, p):
    """The polygon as the enumeration clipped it before: every unit's violation at every round."""
    u0, u1, v0, v1 = box
    vertices = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)
    labels = [-1, -1, -1, -1]
    s = np.where(z > 0, 1.0, -1.0)
    keep = (np.abs(grad).sum(1) > 0) & np.isfinite(z)
    a = (s[:, None] * grad)[keep]
    c = (s * (z - grad @ p))[keep]
    index = np.nonzero(keep)[0]
    scale = np.abs(a).sum(1) * max(abs(u0), abs(u1), abs(v0), abs(v1), 1.0) + np.abs(c)
    while len(vertices) >= 3:
        violation = -(vertices @ a.T + c) / scale
        worst = violation.max(0)
        k = int(worst.argmax())
        if worst[k] <= 1e-12:
            break
        vertices, labels = slices._clip(vertices, labels, a[k], c[k], int(index[k]))
    return vertices, labels


def same_polygon(a, b, atol=1e-12):
    """The same vertices in the same cyclic order (any starting vertex), each within `atol`."""
    if len(a) != len(b):
        return False
    return any(np.allclose(np.roll(a, shift, 0), b, rtol=0, atol=atol) for shift in range(len(a)))


def plane_through(tf, seed):
    x = torch.randn((3, *tf.input_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    origin = x[0].flatten()
    return origin, torch.stack([x[1].flatten() - origin, x[2].flatten() - origin], 1)


def test_slice_equals_the_full_scan_enumeration(resnet, monkeypatch):
    """The same regions with the same polygons (their numbering follows the order facets are met in, which the
    clipping order may change)."""
    origin, plane = plane_through(resnet, 3)
    box = (-0.03, 0.03, -0.03, 0.03)
    fast = slice_partition(resnet, origin, plane, box, max_regions=3000)

    def full_scan(box, z, grad, p):
        return [(z[i].numpy(), grad[i].numpy(), p[i].numpy()) for i in range(z.shape[0])]

    monkeypatch.setattr(slices, "_constraints", full_scan)
    monkeypatch.setattr(slices, "_clip_region", full_scan_polygon)
    slow = slice_partition(resnet, origin, plane, box, max_regions=3000)
    assert fast.complete and slow.complete
    assert set(fast.patterns) == set(slow.patterns) and len(fast.polygons) == len(slow.polygons) > 30
    for key, i in fast.patterns.items():
        assert same_polygon(fast.polygons[i], slow.polygons[slow.patterns[key]])


def test_region_polygon_keeps_the_full_scan_edges(resnet):
    origin, plane = plane_through(resnet, 4)
    p = torch.tensor([[0.01, -0.02], [0.0, 0.0]], dtype=torch.float64)
    zs, dzs = resnet.jvp(origin + p @ plane.T, plane.T.contiguous().repeat(2, 1))
    z, dz = torch.cat(zs, 1), torch.cat(dzs, 1)
    grad = torch.stack([dz[0::2], dz[1::2]], -1)
    box = (-0.1, 0.1, -0.1, 0.1)
    for i in range(2):
        fast = slices.region_polygon(box, z[i].numpy(), grad[i].numpy(), p[i].numpy())
        slow = full_scan_polygon(box, z[i].numpy(), grad[i].numpy(), p[i].numpy())
        assert len(fast[1]) >= 3 and sorted(fast[1]) == sorted(slow[1])
        assert same_polygon(fast[0], slow[0])


def dual_hutchinson(tf, x, probes, generator, batch):
    """The estimate as the pass computed it before: one float64 dual forward of [points; directions]."""
    per = max(1, batch // probes)
    norms = []
    for start in range(0, x.shape[0], per):
        xs = x[start:start + per]
        v = torch.randn((xs.shape[0] * probes, int(np.prod(tf.input_shape))), generator=generator, dtype=tf.dtype)
        _, dzs = tf.jvp(xs, v)
        norms.append(torch.cat(dzs, 1).square().reshape(xs.shape[0], probes, -1).mean(1).sqrt())
    return torch.cat(norms)


@pytest.mark.parametrize("batch", [16, 40])
def test_hutchinson_float32_directions_equal_the_float64_dual_forward(resnet, batch):
    x = torch.randn((3, *resnet.input_shape), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    expected = dual_hutchinson(resnet, x, 8, torch.Generator().manual_seed(1), batch)
    _, same = hutchinson_norms(resnet, x, 8, torch.Generator().manual_seed(1), batch, dtype=torch.float64)
    _, fast = hutchinson_norms(resnet, x, 8, torch.Generator().manual_seed(1), batch)
    alive = expected > 0
    assert alive.float().mean() > 0.3 and torch.equal(alive, fast > 0)
    np.testing.assert_allclose(same.numpy(), expected.numpy(), rtol=1e-12, atol=0)
    relative = ((fast - expected).abs() / expected)[alive]
    assert 0 < relative.max() < 1e-4


def test_tangent_pickles_as_its_model(resnet):
    copy = pickle.loads(pickle.dumps(resnet))
    x = torch.randn((4, *resnet.input_shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert copy is not resnet and copy.n_units == resnet.n_units
    for a, b in zip(copy.forward(x)[1], resnet.forward(x)[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert pickle.loads(pickle.dumps(resnet)) is copy


def test_walks_in_worker_processes_equal_the_walk_here(resnet):
    g = torch.Generator().manual_seed(5)
    a = torch.randn((3, *resnet.input_shape), generator=g, dtype=torch.float64)
    b = torch.randn((3, *resnet.input_shape), generator=g, dtype=torch.float64)
    here = walk(resnet, a, b)
    ended = []
    there = walk(resnet, a, b, jobs=2, on_segment=lambda: ended.append(1))
    assert len(ended) == 3 and here.counts.min() > 20
    np.testing.assert_array_equal(here.counts, there.counts)
    for t1, t2, l1, l2 in zip(here.t, there.t, here.layer, there.layer):
        np.testing.assert_allclose(t1, t2, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(l1, l2)


def test_truncated_segments_count_only_the_part_walked(resnet):
    g = torch.Generator().manual_seed(6)
    x = torch.randn((12, *resnet.input_shape), generator=g, dtype=torch.float64)
    segs = compute.segments(x, 4, 1.0, g)
    full = walk(resnet, *segs["point-noise"])
    cap = int(np.median(full.counts))
    stats = compute._walk_stats(resnet, segs, ["point-noise"], cap)
    walked = stats["segment_walked"][1][0]
    counts = stats["breakpoints"][1][0]
    truncated = counts == cap
    assert truncated.any() and (~truncated).any()
    np.testing.assert_array_equal(walked[~truncated], 1.0)
    last = np.array([t[cap - 1] for t, cut in zip(full.t, truncated) if cut])
    np.testing.assert_allclose(walked[truncated], last, rtol=1e-9)
    expected = counts.sum() / (full.length * np.where(truncated, [t[min(cap, len(t)) - 1] for t in full.t], 1.0)).sum()
    assert stats["breakpoint_density"][1][0] == pytest.approx(expected, rel=1e-12)


def test_worker_count_is_not_part_of_a_study_fingerprint():
    from rfprobe.passes import REGISTRY

    neutral = [o.name for o in REGISTRY["partition"].options if not o.decides_result]
    assert neutral == ["jobs"]
    from rfprobe.study.request import Request

    fingerprints = set()
    for jobs in (1, 2):
        request = Request.__new__(Request)
        request.options = {"partition": {**REGISTRY["partition"].defaults(), "jobs": jobs}}
        request.arch = request.num_classes = None
        request.build = lambda entry: {}
        request.reads_data = lambda name: False
        fingerprints.add(request.fingerprint("partition", "cpu"))
    assert len(fingerprints) == 1


def test_stage_seconds_and_worker_count_are_recorded():
    model = randomise_bn(build_model("mlp_2x8", 2, seed=0))
    data = load_dataset("toy2d:moons", "test", limit=64)
    ds = compute.run(model, data, segments_per_kind=2, exact_points=1, probes=4, lc_points=2, jitter_batches=2,
                     slice_max_regions=20, slice_resolution=8)
    seconds = json.loads(ds.attrs["stage_seconds"])
    assert set(seconds) == {"walk", "distances", "unit_distances", "local_complexity", "jitter", "slice"}
    assert all(v >= 0 for v in seconds.values()) and ds.attrs["walk_jobs"] == 1


def test_workers_start_only_where_the_walks_outlast_their_start(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr("rfprobe.pool.cores", lambda: 8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    net = lambda units, device=cpu: SimpleNamespace(n_units=units, device=device, source=torch.nn.Linear(2, 2))  # noqa: E731
    assert compute.walk_jobs(0, net(73_728)) == 1
    assert compute.walk_jobs(0, net(188_416)) == 8
    assert compute.walk_jobs(0, net(73_728), ["train-train", "radius"]) == 8
    assert compute.walk_jobs(0, net(9_000), ["point-noise"]) == 1
    assert compute.walk_jobs(0, net(188_416, cuda)) == 1
    assert compute.walk_jobs(3, net(100)) == 3
    unpicklable = SimpleNamespace(n_units=188_416, device=cpu, source=lambda: None)
    assert compute.walk_jobs(0, unpicklable) == 1 and compute.walk_jobs(4, unpicklable) == 1
