import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsparse import ops
from torchsparse.ops import point_voxel as pv
from torchsparse.testing import (
    brute_force_point_voxel_query,
    random_coords,
    reference_devoxelize,
    reference_voxelize,
)


def _voxels_and_points(device, stride=(1, 1, 1), num_voxels=300, num_points=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = random_coords(num_voxels, (8, 8, 8), batch_size=2, low=(-4, -4, -4), seed=seed)
    batch = torch.randint(0, 2, (num_points, 1), generator=g).double()
    xyz = (torch.rand(num_points, 3, generator=g, dtype=torch.float64) * 12 - 6) * torch.tensor(stride)
    points = torch.cat([batch, xyz], 1)
    # Points exactly on voxel corners and faces, where floor() and the weights meet their edge cases.
    points[:20, 1:] = points[:20, 1:].round()
    return coords.to(device), points.to(device)


@pytest.mark.parametrize("neighbours", [1, 8])
@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_query_matches_reference(device, neighbours, stride):
    coords, points = _voxels_and_points(device, stride)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    idx, weights = ops.point_voxel_query(points, table, stride, neighbours)
    ref_idx, ref_weights = brute_force_point_voxel_query(points.cpu(), coords.cpu(), stride, neighbours)
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(weights.cpu(), ref_weights, rtol=1e-12, atol=1e-12)


def test_query_weights_sum_to_one_where_any_neighbour_exists(device):
    coords, points = _voxels_and_points(device, num_points=2000)
    points = points[20:]  # off the voxel faces, every trilinear weight is positive
    table, _ = ops.hash_build(ops.pack_coords(coords))
    idx, weights = ops.point_voxel_query(points, table, (1, 1, 1), 8)
    found = (idx >= 0).any(1)
    assert 0 < int(found.sum()) < len(points)
    # Renormalising by (sum + 1e-8) leaves 1 - 1e-8 / sum: visible only when the present voxels are far away.
    torch.testing.assert_close(weights[found].sum(1), torch.ones_like(weights[found, 0]), rtol=0, atol=1e-3)
    assert bool((weights[found].sum(1) <= 1).all())
    assert bool((weights[~found] == 0).all())
    assert bool((weights[idx < 0] == 0).all())


def test_query_point_on_a_face_keeps_v21_weights(device):
    # A point on the face x = 1 gives the x + 1 neighbours weight 0. When the x + 0 neighbours are absent the
    # renormalised weights are all 0, as in TorchSparse v2.1: the point reads zero features.
    coords = torch.tensor([[0, 2, 0, 0]], dtype=torch.int32, device=device)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    idx, weights = ops.point_voxel_query(
        torch.tensor([[0, 1.0, 0.5, 0.5]], device=device), table, (1, 1, 1), 8
    )
    assert idx.tolist() == [[-1, -1, -1, -1, 0, -1, -1, -1]]
    assert weights.tolist() == [[0.0] * 8]


def test_query_float32_matches_float64(device):
    coords, points = _voxels_and_points(device)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    idx64, w64 = ops.point_voxel_query(points, table, (2, 2, 2), 8)
    idx32, w32 = ops.point_voxel_query(points.float(), table, (2, 2, 2), 8)
    assert w32.dtype == torch.float32
    assert torch.equal(idx32, idx64)
    torch.testing.assert_close(w32.double(), w64, rtol=1e-5, atol=1e-6)


def test_query_edge_cases(device):
    coords = torch.tensor([[0, 32767, 0, 0], [1, -32768, 0, 0]], dtype=torch.int32, device=device)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    points = torch.tensor(
        [[0, 32767.5, 0.5, 0.5], [1, -32768.0, 0, 0], [0, 1e30, 0, 0], [1, -1e30, 0, 0]],
        dtype=torch.float64,
        device=device,
    )
    idx, weights = ops.point_voxel_query(points, table, (1, 1, 1), 8)
    # The +1 neighbours of the first point lie outside the packable range: absent, not an error.
    assert idx[0].tolist() == [0, -1, -1, -1, -1, -1, -1, -1]
    assert idx[1, 0] == 1 and bool((idx[2:] == -1).all()) and bool((weights[2:] == 0).all())
    empty_idx, empty_w = ops.point_voxel_query(points[:0], table, (1, 1, 1), 8)
    assert empty_idx.shape == (0, 8) and empty_w.shape == (0, 8)


@pytest.mark.parametrize(
    "points, match",
    [
        ([[0, float("nan"), 0, 0]], "NaN or inf"),
        ([[0, 0, float("inf"), 0]], "NaN or inf"),
        ([[0.5, 0, 0, 0]], "batch"),
        ([[-1, 0, 0, 0]], "batch"),
    ],
)
def test_query_rejects_bad_points(device, points, match):
    table, _ = ops.hash_build(ops.pack_coords(torch.zeros(1, 4, dtype=torch.int32, device=device)))
    with pytest.raises(ValueError, match=match):
        ops.point_voxel_query(torch.tensor(points, dtype=torch.float64, device=device), table, (1, 1, 1), 8)


def test_query_rejects_bad_arguments(device):
    table, _ = ops.hash_build(ops.pack_coords(torch.zeros(1, 4, dtype=torch.int32, device=device)))
    points = torch.zeros(3, 4, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="neighbours must be 1 or 8"):
        ops.point_voxel_query(points, table, (1, 1, 1), 4)
    with pytest.raises(TypeError, match="points must be float32 or float64"):
        ops.point_voxel_query(points.int(), table, (1, 1, 1), 1)
    with pytest.raises(ValueError, match=r"points must be \(N, 4\)"):
        ops.point_voxel_query(points[:, :3], table, (1, 1, 1), 1)


def test_count(device):
    idx = torch.tensor([2, -1, 0, 2, 2, -1], device=device)
    assert ops.point_voxel_count(idx, 4).tolist() == [1, 0, 3, 0]
    assert ops.point_voxel_count(idx[:0], 3).tolist() == [0, 0, 0]
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 2\)"):
        ops.point_voxel_count(idx, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_voxelize_matches_reference(device, dtype):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(-1, 40, (500,), generator=g)
    feats = torch.randn(500, 7, generator=g, dtype=dtype)
    counts = ops.point_voxel_count(idx, 45)  # voxels 40..44 stay empty
    out = ops.voxelize(feats.to(device), idx.to(device), counts.to(device))
    torch.testing.assert_close(out.cpu(), reference_voxelize(feats, idx, counts))
    assert bool((out[40:] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_devoxelize_matches_reference(device, dtype):
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(-1, 30, (200, 8), generator=g)
    weights = torch.rand(200, 8, generator=g, dtype=dtype)
    feats = torch.randn(30, 5, generator=g, dtype=dtype)
    out = ops.devoxelize(feats.to(device), idx.to(device), weights.to(device))
    torch.testing.assert_close(out.cpu(), reference_devoxelize(feats, idx, weights))


def test_gradcheck(device):
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(-1, 6, (15,), generator=g).to(device)
    counts = ops.point_voxel_count(idx, 7)
    feats = torch.randn(15, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    torch.autograd.gradcheck(lambda f: ops.voxelize(f, idx, counts), (feats,))
    idx8 = torch.randint(-1, 6, (10, 8), generator=g).to(device)
    weights = torch.rand(10, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    vfeats = torch.randn(6, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    torch.autograd.gradcheck(lambda f, w: ops.devoxelize(f, idx8, w), (vfeats, weights))


def test_opcheck(device):
    g = torch.Generator().manual_seed(4)
    coords, points = _voxels_and_points(device, num_voxels=40, num_points=30)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    torch.library.opcheck(
        torch.ops.torchsparse.point_voxel_query,
        (points, table.keys, table.values, [2, 2, 2], 8),
        test_utils=("test_schema", "test_faketensor"),
    )
    idx = torch.randint(-1, 6, (15,), generator=g).to(device)
    counts = ops.point_voxel_count(idx, 6)
    torch.library.opcheck(
        torch.ops.torchsparse.point_voxel_count, (idx, 6), test_utils=("test_schema", "test_faketensor")
    )
    feats = torch.randn(15, 3, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.torchsparse.voxelize, (feats, idx, counts))
    idx8 = torch.randint(-1, 6, (10, 8), generator=g).to(device)
    weights = torch.rand(10, 8, dtype=torch.float64, device=device, requires_grad=True)
    vfeats = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.torchsparse.devoxelize, (vfeats, idx8, weights))
    grad = torch.randn(10, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.torchsparse.devoxelize_backward, (grad, idx8, weights.detach(), 6))


def test_voxelize_and_devoxelize_reject_bad_input(device):
    feats = torch.randn(4, 2, device=device)
    idx = torch.tensor([0, 1, 1, -1], device=device)
    counts = ops.point_voxel_count(idx, 2)
    with pytest.raises(ValueError, match="idx must have one entry per row"):
        ops.voxelize(feats, idx[:3], counts)
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 1\)"):
        ops.voxelize(feats, idx, counts[:1])
    with pytest.raises(TypeError, match="weights must have the dtype"):
        ops.devoxelize(feats, idx.view(2, 2), torch.ones(2, 2, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="weights must have the shape"):
        ops.devoxelize(feats, idx.view(2, 2), torch.ones(2, 3, device=device))


def test_scatters_are_deterministic_across_thread_counts(device):
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(-1, 300, (20_000,), generator=g).to(device)
    feats = torch.randn(20_000, 16, generator=g).to(device)
    idx8 = torch.randint(-1, 300, (5_000, 8), generator=g).to(device)
    weights = torch.rand(5_000, 8, generator=g).to(device)
    grad = torch.randn(5_000, 16, generator=g).to(device)
    counts = ops.point_voxel_count(idx, 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(
                (
                    ops.voxelize(feats, idx, counts),
                    torch.ops.torchsparse.devoxelize_backward(grad, idx8, weights, 300),
                )
            )
    finally:
        torch.set_num_threads(threads)
    for voxelized, backward in results[1:]:
        assert torch.equal(voxelized, results[0][0]) and torch.equal(backward, results[0][1])


# The portable kernel bodies (csrc/point_voxel/point_voxel_kernels.h) are what the CUDA ops run. On the CPU they run
# as point_voxel_query itself and as the *_portable ops; they must equal the CPU ops bit for bit (both sum every
# output in input order), and on CUDA the CUDA ops must equal the CPU ops bit for bit.
# `device` is a parameter, not state: the same for every example of a test.
PORTABLE = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _scatter_case(seed, n, m, channels, k, dtype):
    """idx (n,) and idx8 (n, k) in [-1, m) with many repeats and -1s, point features (n, channels), weights (n, k)
    (some exactly 0) and voxel features (m, channels)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(-1, m, (n,), generator=g) if m else torch.full((n,), -1)
    idx8 = torch.randint(-1, m, (n, k), generator=g) if m else torch.full((n, k), -1)
    feats = torch.randn(n, channels, generator=g, dtype=dtype)
    weights = torch.rand(n, k, generator=g, dtype=dtype) * (torch.rand(n, k, generator=g) < 0.9)
    return idx, idx8, feats, weights, torch.randn(m, channels, generator=g, dtype=dtype)


@PORTABLE
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 300),
    m=st.integers(0, 60),
    channels=st.integers(0, 9),
    k=st.sampled_from([1, 3, 8]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_portable_scatters_equal_cpu_ops_bitwise(device, seed, n, m, channels, k, dtype):
    idx, idx8, feats, weights, vfeats = _scatter_case(seed, n, m, channels, k, dtype)
    counts = ops.point_voxel_count(idx, m)
    counts_dev = pv.point_voxel_count_portable(idx.to(device), m)
    assert counts_dev.device.type == device and torch.equal(counts_dev.cpu(), counts)
    assert counts.tolist() == [int((idx == v).sum()) for v in range(m)]

    out = pv.voxelize_portable(feats.to(device), idx.to(device), counts.to(device))
    expected = ops.voxelize(feats, idx, counts)
    assert out.dtype == dtype and torch.equal(out.cpu(), expected)
    torch.testing.assert_close(out.cpu(), reference_voxelize(feats, idx, counts))

    out = pv.devoxelize_portable(vfeats.to(device), idx8.to(device), weights.to(device))
    assert torch.equal(out.cpu(), ops.devoxelize(vfeats, idx8, weights))
    torch.testing.assert_close(out.cpu(), reference_devoxelize(vfeats, idx8, weights))

    grad = pv.devoxelize_backward_portable(feats.to(device), idx8.to(device), weights.to(device), m)
    assert torch.equal(grad.cpu(), torch.ops.torchsparse.devoxelize_backward(feats, idx8, weights, m))


def test_portable_voxelize_follows_counts_not_idx(device):
    # counts is the caller's divisor: a voxel with entries but count 0 is zero, a count without entries divides 0.
    idx = torch.tensor([1, 1, 0, -1, 1], device=device)
    feats = torch.arange(10.0, device=device).view(5, 2)
    counts = torch.tensor([0, 2, 5], device=device)
    out = pv.voxelize_portable(feats, idx, counts)
    assert out.tolist() == [[0.0, 0.0], [5.0, 6.5], [0.0, 0.0]]
    assert torch.equal(out.cpu(), ops.voxelize(feats.cpu(), idx.cpu(), counts.cpu()))


def test_portable_scatter_sums_in_input_order(device):
    # 1 + 1e16 - 1e16 rounds differently in every order but the input order: the result shows the order.
    idx = torch.tensor([0, 0, 0, 1], device=device)
    feats = torch.tensor([[1.0], [1e16], [-1e16], [3.0]], dtype=torch.float64, device=device)
    counts = torch.tensor([1, 1], device=device)
    assert pv.voxelize_portable(feats, idx, counts).tolist() == [[0.0], [3.0]]
    idx8 = torch.tensor([[0], [0], [0]], device=device)
    ones = torch.ones(3, 1, dtype=torch.float64, device=device)
    grad = pv.devoxelize_backward_portable(feats[:3], idx8, ones, 1)
    assert grad.tolist() == [[0.0]]


@PORTABLE
@given(
    seed=st.integers(0, 2**31 - 1),
    stride=st.sampled_from([(1, 1, 1), (2, 2, 2), (1, 2, 4)]),
    neighbours=st.sampled_from([1, 8]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_query_on_device_equals_cpu_and_reference(device, seed, stride, neighbours, dtype):
    coords, points = _voxels_and_points("cpu", stride, num_voxels=80, num_points=120, seed=seed)
    points = points.to(dtype)
    table, _ = ops.hash_build(ops.pack_coords(coords))
    idx, weights = ops.point_voxel_query(points, table, stride, neighbours)
    dev_table, _ = ops.hash_build(ops.pack_coords(coords.to(device)))
    dev_idx, dev_weights = ops.point_voxel_query(points.to(device), dev_table, stride, neighbours)
    # Table layouts may differ between devices; the rows found may not.
    assert torch.equal(dev_idx.cpu(), idx) and torch.equal(dev_weights.cpu(), weights)
    ref_idx, ref_weights = brute_force_point_voxel_query(points, coords, stride, neighbours)
    assert torch.equal(idx, ref_idx)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(weights.double(), ref_weights, rtol=tol, atol=tol)


def test_portable_ops_reject_bad_input(device):
    feats = torch.randn(4, 2, device=device)
    idx = torch.tensor([0, 1, 1, -1], device=device)
    counts = ops.point_voxel_count(idx, 2)
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 2\)"):
        pv.point_voxel_count_portable(idx + 1, 2)
    with pytest.raises(ValueError, match="num_voxels must be >= 0"):
        pv.point_voxel_count_portable(idx, -1)
    with pytest.raises(ValueError, match="idx must have one entry per row"):
        pv.voxelize_portable(feats, idx[:3], counts)
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 1\)"):
        pv.voxelize_portable(feats, idx, counts[:1])
    with pytest.raises(ValueError, match="counts must be >= 0"):
        pv.voxelize_portable(feats, idx, -counts)
    with pytest.raises(TypeError, match="feats must be float32 or float64"):
        pv.voxelize_portable(feats.half(), idx, counts)
    with pytest.raises(TypeError, match="weights must have the dtype"):
        pv.devoxelize_portable(feats, idx.view(2, 2), torch.ones(2, 2, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="weights must have the shape"):
        pv.devoxelize_portable(feats, idx.view(2, 2), torch.ones(2, 3, device=device))
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 4\)"):
        pv.devoxelize_portable(feats, (idx + 3).view(2, 2), torch.ones(2, 2, device=device))
    with pytest.raises(IndexError, match=r"idx values must be in \[-1, 1\)"):
        pv.devoxelize_backward_portable(feats[:2], idx.view(2, 2), torch.ones(2, 2, device=device), 1)
    with pytest.raises(ValueError, match="grad_output must have one row per row of idx"):
        pv.devoxelize_backward_portable(feats, idx.view(2, 2), torch.ones(2, 2, device=device), 2)


def test_portable_scatters_are_deterministic_across_thread_counts(device):
    args = [t.to(device) for t in _scatter_case(5, 20_000, 300, 16, 8, torch.float32)]
    counts = ops.point_voxel_count(args[0], 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(
                (
                    pv.voxelize_portable(args[2], args[0], counts),
                    pv.devoxelize_backward_portable(args[2], args[1], args[3], 300),
                )
            )
    finally:
        torch.set_num_threads(threads)
    for voxelized, backward in results[1:]:
        assert torch.equal(voxelized, results[0][0]) and torch.equal(backward, results[0][1])


def test_portable_opcheck(device):
    idx, idx8, feats, weights, vfeats = (t.to(device) for t in _scatter_case(6, 15, 6, 3, 8, torch.float64))
    counts = ops.point_voxel_count(idx, 6)
    utils = ("test_schema", "test_faketensor")
    T = torch.ops.torchsparse
    torch.library.opcheck(T.point_voxel_count_portable, (idx, 6), test_utils=utils)
    torch.library.opcheck(T.voxelize_portable, (feats, idx, counts), test_utils=utils)
    torch.library.opcheck(T.devoxelize_portable, (vfeats, idx8, weights), test_utils=utils)
    torch.library.opcheck(T.devoxelize_backward_portable, (feats, idx8, weights, 6), test_utils=utils)
