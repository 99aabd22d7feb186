import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsparse.ops.bev_pool import (
    bev_pool,
    bev_pool_apply,
    bev_pool_apply_portable,
    bev_pool_backward_portable,
    bev_pool_plan,
    bev_pool_plan_portable,
)
from torchsparse.testing.bev_pool_references import (
    cumsum_bev_pool,
    frustum_bev_coords,
    random_bev_points,
    reference_bev_pool,
)

CASES = [
    {},
    {"n": 1, "channels": 3, "batch_size": 1, "grid": (1, 1, 1)},
    {"n": 2000, "channels": 1, "batch_size": 3, "grid": (1, 7, 9)},
    {"n": 300, "channels": 16, "batch_size": 1, "grid": (4, 3, 3)},
    {"n": 0, "channels": 4},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_backward_equal_index_add_oracle(device, case, dtype):
    feats, coords = random_bev_points(device, dtype=dtype, **case)
    batch_size, grid = case.get("batch_size", 2), case.get("grid", (2, 5, 4))
    feats.requires_grad_()
    out = bev_pool(feats, coords, batch_size, grid)
    ref_feats = feats.detach().clone().requires_grad_()
    ref = reference_bev_pool(ref_feats, coords, batch_size, grid)
    assert out.shape == (batch_size, feats.shape[1], *grid) and out.is_contiguous()
    assert torch.equal(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(feats.grad, ref_feats.grad)


def test_points_outside_the_grid_get_no_output_and_zero_gradient(device):
    coords = torch.tensor(
        [[0, 0, 0, 0], [-1, 0, 0, 0], [0, 3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, -1], [1, 2, 0, 0]],
        dtype=torch.int32,
        device=device,
    )
    feats = torch.arange(1.0, 8.0, dtype=torch.float64, device=device).unsqueeze(1).requires_grad_()
    out = bev_pool(feats, coords, 1, (1, 2, 3))
    expected = torch.zeros(1, 1, 1, 2, 3, dtype=torch.float64)
    expected[0, 0, 0, 0, 0], expected[0, 0, 0, 1, 2] = 1.0, 7.0
    assert torch.equal(out.cpu(), expected)
    out.sum().backward()
    assert feats.grad.squeeze(1).tolist() == [1, 0, 0, 0, 0, 0, 1]


def test_plan_is_a_stable_sort_cut_into_runs(device):
    _, coords = random_bev_points(device, n=3000, batch_size=3, grid=(2, 6, 5))
    plan = bev_pool_plan(coords, 3, (2, 6, 5))
    x, y, z, b = coords.long().cpu().unbind(1)
    kept = (x >= 0) & (x < 6) & (y >= 0) & (y < 5) & (z >= 0) & (z < 2) & (b >= 0) & (b < 3)
    rank = ((b * 2 + z) * 6 + x) * 5 + y
    sorted_rank, order = torch.sort(rank[kept], stable=True)
    assert torch.equal(plan.order.cpu(), kept.nonzero().squeeze(1)[order])
    cells, lengths = torch.unique_consecutive(sorted_rank, return_counts=True)
    assert torch.equal(plan.cells.cpu(), cells) and torch.equal(plan.lengths.cpu(), lengths)
    assert torch.equal(plan.starts.cpu(), lengths.cumsum(0) - lengths)
    assert all(t.dtype == torch.int64 for t in plan[:4])
    assert plan.batch_size == 3 and plan.grid == (2, 6, 5)


def test_plan_of_a_large_grid_sorts_in_several_radix_passes(device):
    # 2 x 41 x 1440 x 1440 cells need 28 bits: two counting passes of 14 bits.
    g = torch.Generator().manual_seed(1)
    coords = torch.stack(
        [
            torch.randint(0, 1440, (5000,), generator=g),
            torch.randint(0, 1440, (5000,), generator=g),
            torch.randint(0, 41, (5000,), generator=g),
            torch.randint(0, 2, (5000,), generator=g),
        ],
        1,
    )
    coords[2500:] = coords[:2500]  # every cell twice
    plan = bev_pool_plan(coords.to(device), 2, (41, 1440, 1440))
    x, y, z, b = coords.unbind(1)
    rank = ((b * 41 + z) * 1440 + x) * 1440 + y
    sorted_rank, order = torch.sort(rank, stable=True)
    assert torch.equal(plan.order.cpu(), order)
    assert torch.equal(plan.cells.cpu(), torch.unique_consecutive(sorted_rank))
    assert bool((plan.lengths >= 2).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float(device, dtype):
    feats, coords = random_bev_points(device, n=2000, channels=3, batch_size=1, grid=(1, 2, 2), dtype=torch.float32)
    out = bev_pool(feats.to(dtype), coords, 1, (1, 2, 2))
    assert out.dtype == dtype
    ref = reference_bev_pool(feats.to(dtype).double(), coords, 1, (1, 2, 2))
    # ~500 points per cell: a float accumulator leaves only the final rounding to dtype.
    torch.testing.assert_close(out.double(), ref, rtol=2 * torch.finfo(dtype).eps, atol=0)


def test_cumsum_trick_matches_oracle_up_to_rounding(device):
    feats, coords = random_bev_points(device, n=2000, channels=4)
    torch.testing.assert_close(
        cumsum_bev_pool(feats, coords, 2, (2, 5, 4)), reference_bev_pool(feats, coords, 2, (2, 5, 4))
    )


def test_frustum_geometry_matches_oracle(device):
    coords, batch_size, grid = frustum_bev_coords(feature_size=(4, 11), depth_bound=(1.0, 60.0, 4.0))
    feats = torch.randn(len(coords), 6, dtype=torch.float64)
    out = bev_pool(feats.to(device), coords.to(device), batch_size, grid)
    assert grid == (1, 360, 360)
    assert torch.equal(out.cpu(), reference_bev_pool(feats, coords, batch_size, grid))


def test_gradcheck(device):
    feats, coords = random_bev_points(device, n=40, channels=3, batch_size=2, grid=(1, 3, 2))
    plan = bev_pool_plan(coords, 2, (1, 3, 2))
    feats.requires_grad_()
    torch.autograd.gradcheck(lambda f: bev_pool_apply(f, plan), (feats,))
    torch.autograd.gradgradcheck(lambda f: bev_pool_apply(f, plan), (feats,))


def test_opcheck(device):
    feats, coords = random_bev_points(device, n=50, channels=3)
    torch.library.opcheck(
        torch.ops.torchsparse.bev_pool_plan,
        (coords, 2, [2, 5, 4]),
        test_utils=("test_schema", "test_faketensor"),
    )
    plan = bev_pool_plan(coords, 2, (2, 5, 4))
    args = (plan.order, plan.starts, plan.lengths, plan.cells)
    torch.library.opcheck(torch.ops.torchsparse.bev_pool, (feats.requires_grad_(), *args, 2, 2, 5, 4))
    grad = torch.randn(2, 3, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.torchsparse.bev_pool_backward, (grad, *args, 50))


def test_empty_plan(device):
    coords = torch.zeros(0, 4, dtype=torch.int64, device=device)
    plan = bev_pool_plan(coords, 1, (1, 2, 2))
    assert all(t.shape == (0,) for t in plan[:4])
    out = bev_pool_apply(torch.zeros(0, 7, device=device), plan)
    assert out.shape == (1, 7, 1, 2, 2) and not bool(out.any())


def test_rejects_bad_arguments(device):
    feats, coords = random_bev_points(device, n=200, channels=2)
    with pytest.raises(ValueError, match=r"coords must be \(N, 4\)"):
        bev_pool_plan(coords[:, :3], 2, (2, 5, 4))
    with pytest.raises(TypeError, match="coords must be int32 or int64"):
        bev_pool_plan(coords.float(), 2, (2, 5, 4))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bev_pool_plan(coords, 0, (2, 5, 4))
    with pytest.raises(ValueError, match="grid values must be >= 1"):
        bev_pool_plan(coords, 2, (2, 0, 4))
    with pytest.raises(ValueError, match=r"grid must be \(Z, X, Y\)"):
        bev_pool_plan(coords, 2, (5, 4))
    with pytest.raises(ValueError, match="too many cells"):
        bev_pool_plan(coords, 2**20, (2**20, 2**20, 2**20))
    with pytest.raises(ValueError, match="coords must be"):
        bev_pool(feats[:10], coords, 2, (2, 5, 4))
    plan = bev_pool_plan(coords, 2, (2, 5, 4))
    assert len(plan.cells) > 2
    with pytest.raises(TypeError, match="feats must be a floating-point"):
        bev_pool_apply(feats.long(), plan)
    with pytest.raises(IndexError, match=r"order values must be in \[0, 3\)"):
        bev_pool_apply(feats[:3], plan)
    with pytest.raises(ValueError, match="cells must be strictly increasing"):
        bev_pool_apply(feats, plan._replace(cells=plan.cells.flip(0)))
    with pytest.raises(ValueError, match="consecutive non-empty runs"):
        bev_pool_apply(feats, plan._replace(lengths=plan.lengths + 1))
    with pytest.raises(ValueError, match="must cover order"):
        bev_pool_apply(
            feats, plan._replace(starts=plan.starts[:-1], lengths=plan.lengths[:-1], cells=plan.cells[:-1])
        )
    with pytest.raises(ValueError, match="same length"):
        bev_pool_apply(feats, plan._replace(cells=plan.cells[:-1]))
    duplicated = plan._replace(order=torch.zeros_like(plan.order))
    grad = torch.zeros(2, 2, 2, 5, 4, device=device, dtype=feats.dtype)
    with pytest.raises(ValueError, match="distinct rows"):
        torch.ops.torchsparse.bev_pool_backward(grad, *duplicated[:4], 200)


def test_deterministic_across_thread_counts(device):
    # Enough points for the sort to split into several chunks, a grid large enough for long and short runs.
    g = torch.Generator().manual_seed(7)
    n = 150_000
    coords = torch.stack(
        [torch.randint(-2, 90, (n,), generator=g), torch.randint(0, 90, (n,), generator=g)]
        + [torch.zeros(n, dtype=torch.int64)] * 2,
        1,
    ).to(device)
    feats = torch.randn(n, 8, generator=g).to(device)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            plan = bev_pool_plan(coords, 1, (1, 88, 90))
            out = bev_pool_apply(feats, plan)
            grad = torch.ops.torchsparse.bev_pool_backward(out, *plan[:4], n)
            results.append((*plan[:4], out, grad))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


# The portable kernels (csrc/bev_pool/bev_pool_kernels.h) are what the CUDA ops run; on the CPU they run as the
# *_portable ops. They must give today's CPU plan exactly and its sums bit for bit, on either device.
PORTABLE = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # `device` is a parameter, not state
)


def _assert_same_plan(plan, expected):
    assert plan[4:] == expected[4:]
    for a, b in zip(plan[:4], expected[:4]):
        assert a.dtype == torch.int64 and a.is_contiguous() and torch.equal(a.cpu(), b)


@PORTABLE
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(0, 400),
    channels=st.integers(0, 6),
    batch_size=st.integers(1, 3),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    index_dtype=st.sampled_from([torch.int32, torch.int64]),
)
def test_portable_equals_cpu_ops_bitwise(device, seed, n, channels, batch_size, grid, dtype, index_dtype):
    feats, coords = random_bev_points("cpu", n, channels, batch_size, grid, torch.float32, seed)
    feats, coords = feats.to(dtype), coords.to(index_dtype)
    expected = bev_pool_plan(coords, batch_size, grid)
    plan = bev_pool_plan_portable(coords.to(device), batch_size, grid)
    _assert_same_plan(plan, expected)
    out = bev_pool_apply_portable(feats.to(device), plan)
    assert out.dtype == dtype and torch.equal(out.cpu(), bev_pool_apply(feats, expected))
    if dtype == torch.float64:
        assert torch.equal(out.cpu(), reference_bev_pool(feats, coords, batch_size, grid))
    grad = torch.randn(batch_size, channels, *grid, dtype=torch.float32).to(dtype)
    back = bev_pool_backward_portable(grad.to(device), plan, n)
    assert torch.equal(back.cpu(), torch.ops.torchsparse.bev_pool_backward(grad, *expected[:4], n))


def test_portable_plan_of_a_large_grid(device):
    # 2 x 41 x 1440 x 1440 cells: several radix passes in the CPU plan, one ATen sort in the portable one.
    g = torch.Generator().manual_seed(1)
    n = 6000
    coords = torch.stack(
        [
            torch.randint(-5, 1445, (n,), generator=g),
            torch.randint(0, 1440, (n,), generator=g),
            torch.randint(0, 41, (n,), generator=g),
            torch.randint(0, 3, (n,), generator=g),
        ],
        1,
    )
    coords[3000:] = coords[:3000]  # every cell at least twice
    grid = (41, 1440, 1440)
    plan = bev_pool_plan_portable(coords.to(device), 2, grid)
    _assert_same_plan(plan, bev_pool_plan(coords, 2, grid))
    assert 0 < len(plan.order) < n


def test_portable_frustum_geometry(device):
    coords, batch_size, grid = frustum_bev_coords(feature_size=(4, 11), depth_bound=(1.0, 60.0, 4.0))
    feats = torch.randn(len(coords), 6)
    plan = bev_pool_plan_portable(coords.to(device), batch_size, grid)
    out = bev_pool_apply_portable(feats.to(device), plan)
    assert torch.equal(out.cpu(), bev_pool(feats, coords, batch_size, grid))


def test_portable_half_precision_accumulates_in_float(device):
    # ~500 points per cell: float16 running sums would be far off; the float accumulator is rounded once.
    feats, coords = random_bev_points("cpu", n=2000, channels=3, batch_size=1, grid=(1, 2, 2), dtype=torch.float32)
    plan = bev_pool_plan_portable(coords.to(device), 1, (1, 2, 2))
    out = bev_pool_apply_portable(feats.half().to(device), plan)
    ref = reference_bev_pool(feats.half().double(), coords, 1, (1, 2, 2))
    torch.testing.assert_close(out.cpu().double(), ref, rtol=2 * torch.finfo(torch.float16).eps, atol=0)


def test_portable_empty_and_all_outside(device):
    for coords in (torch.zeros(0, 4, dtype=torch.int64), torch.full((5, 4), -1, dtype=torch.int64)):
        plan = bev_pool_plan_portable(coords.to(device), 1, (1, 2, 2))
        assert all(t.shape == (0,) and t.dtype == torch.int64 for t in plan[:4])
        out = bev_pool_apply_portable(torch.ones(len(coords), 7, device=device), plan)
        assert out.shape == (1, 7, 1, 2, 2) and not bool(out.any())
        grad = bev_pool_backward_portable(torch.ones(1, 7, 1, 2, 2, device=device), plan, len(coords))
        assert grad.shape == (len(coords), 7) and not bool(grad.any())


def test_portable_rejects_bad_plans(device):
    feats, coords = random_bev_points(device, n=200, channels=2)
    plan = bev_pool_plan_portable(coords, 2, (2, 5, 4))
    assert len(plan.cells) > 2
    with pytest.raises(TypeError, match="feats must be a floating-point"):
        bev_pool_apply_portable(feats.long(), plan)
    with pytest.raises(IndexError, match=r"order values must be in \[0, 3\)"):
        bev_pool_apply_portable(feats[:3], plan)
    with pytest.raises(
        ValueError, match="cells must be strictly increasing in \\[0, 80\\), got .* at interval 1"
    ):
        bev_pool_apply_portable(feats, plan._replace(cells=plan.cells.flip(0)))
    with pytest.raises(ValueError, match="cells must be strictly increasing"):
        bev_pool_apply_portable(feats, plan._replace(cells=plan.cells + 80))
    with pytest.raises(ValueError, match="consecutive non-empty runs, got start .* at interval 1"):
        bev_pool_apply_portable(feats, plan._replace(lengths=plan.lengths + 1))
    huge = plan.lengths.clone()
    huge[1] = 2**63 - 1
    with pytest.raises(ValueError, match="at interval 1"):
        bev_pool_apply_portable(feats, plan._replace(lengths=huge))
    with pytest.raises(ValueError, match="must cover order"):
        bev_pool_apply_portable(
            feats, plan._replace(starts=plan.starts[:-1], lengths=plan.lengths[:-1], cells=plan.cells[:-1])
        )
    with pytest.raises(ValueError, match="same length"):
        bev_pool_apply_portable(feats, plan._replace(cells=plan.cells[:-1]))
    with pytest.raises(ValueError, match="B, Z, X and Y must be >= 1"):
        bev_pool_apply_portable(feats, plan._replace(batch_size=0))
    grad = torch.zeros(2, 2, 2, 5, 4, device=device, dtype=feats.dtype)
    with pytest.raises(ValueError, match="distinct rows"):
        bev_pool_backward_portable(grad, plan._replace(order=torch.zeros_like(plan.order)), 200)
    with pytest.raises(IndexError, match=r"order values must be in \[0, 5\)"):
        bev_pool_backward_portable(grad, plan, 5)
    with pytest.raises(ValueError, match="num_points must be >= 0"):
        bev_pool_backward_portable(grad, plan, -1)
    with pytest.raises(ValueError, match=r"coords must be \(N, 4\)"):
        bev_pool_plan_portable(coords[:, :3], 2, (2, 5, 4))
    with pytest.raises(TypeError, match="coords must be int32 or int64"):
        bev_pool_plan_portable(coords.float(), 2, (2, 5, 4))
    with pytest.raises(ValueError, match="too many cells"):
        bev_pool_plan_portable(coords, 2**20, (2**20, 2**20, 2**20))


def test_portable_deterministic_across_thread_counts(device):
    feats, coords = random_bev_points("cpu", n=50_000, channels=8, batch_size=2, grid=(2, 30, 40), dtype=torch.float32)
    feats, coords = feats.to(device), coords.to(device)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            plan = bev_pool_plan_portable(coords, 2, (2, 30, 40))
            out = bev_pool_apply_portable(feats, plan)
            results.append((*plan[:4], out, bev_pool_backward_portable(out, plan, len(feats))))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


def test_portable_opcheck(device):
    feats, coords = random_bev_points(device, n=50, channels=3)
    utils = ("test_schema", "test_faketensor")
    T = torch.ops.torchsparse
    torch.library.opcheck(T.bev_pool_plan_portable, (coords, 2, [2, 5, 4]), test_utils=utils)
    args = tuple(bev_pool_plan(coords, 2, (2, 5, 4))[:4])
    torch.library.opcheck(T.bev_pool_portable, (feats, *args, 2, 2, 5, 4), test_utils=utils)
    grad = torch.randn(2, 3, 2, 5, 4, dtype=torch.float64, device=device)
    torch.library.opcheck(T.bev_pool_backward_portable, (grad, *args, 50), test_utils=utils)
