"""BEV pooling of camera-frustum features (csrc/bev_pool/): BEVFusion's interval reduction.

Points are sorted by their BEV cell (rank = ((b * Z + z) * X + x) * Y + y); the runs of equal rank ("intervals")
are each summed by one thread into their cell. The sort depends only on the points' cells, i.e. on calibration
and augmentation, never on image content, so a `BEVPoolPlan` can be computed once and reused across frames
(`torchsparse.nn.BEVPoolCache` keeps it; this layer holds no state). Deterministic: a stable sort, one thread per interval, no atomics; the result equals
``index_add_`` over the flat cell id bit for bit in float32 and float64.

The CUDA kernels run portable per-element bodies (csrc/bev_pool/bev_pool_kernels.h: ATen's stable sort for the plan,
one body per (interval, channel)) that give the CPU's plan and sums exactly; the ``*_portable`` functions run them on
the CPU, where the dedicated kernels are faster, so that tests check the GPU's logic without a GPU.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

import torchsparse._C  # noqa: F401
from torchsparse.ops.checks import check_same_device

__all__ = [
    "BEVPoolPlan",
    "bev_pool",
    "bev_pool_apply",
    "bev_pool_apply_portable",
    "bev_pool_backward_portable",
    "bev_pool_plan",
    "bev_pool_plan_portable",
]


class BEVPoolPlan(NamedTuple):
    """The precomputed part of bev_pool: which points go to which cell, in summation order.

    Attributes:
        order: int64 (M,) rows of the kept points (inside the grid), sorted by rank; rows of equal rank in input
            order.
        starts: int64 (I,) start of each interval (run of equal rank) in `order`, ascending.
        lengths: int64 (I,) length of each interval, >= 1; the intervals cover `order`.
        cells: int64 (I,) the rank (flat cell of the (batch_size, Z, X, Y) grid) of each interval, strictly
            increasing.
        batch_size: B.
        grid: (Z, X, Y).
    """

    order: Tensor
    starts: Tensor
    lengths: Tensor
    cells: Tensor
    batch_size: int
    grid: tuple[int, int, int]


def _grid(grid: Sequence[int]) -> tuple[int, int, int]:
    if len(grid) != 3:
        raise ValueError(f"grid must be (Z, X, Y), got {tuple(grid)}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def bev_pool_plan(coords: Tensor, batch_size: int, grid: Sequence[int]) -> BEVPoolPlan:
    """Sorts points by BEV cell and cuts the order into intervals of equal cell.

    Args:
        coords: int32/int64 (N, 4) integer cell coordinates (x, y, z, b) of the points (BEVFusion's order).
        batch_size: B >= 1.
        grid: (Z, X, Y) >= 1 each. Points outside 0 <= x < X, 0 <= y < Y, 0 <= z < Z, 0 <= b < B are dropped.

    Returns:
        BEVPoolPlan (see there); deterministic for any thread count.
    """
    grid = _grid(grid)
    order, starts, lengths, cells = torch.ops.torchsparse.bev_pool_plan(coords, int(batch_size), list(grid))
    return BEVPoolPlan(order, starts, lengths, cells, int(batch_size), grid)


def bev_pool_apply(feats: Tensor, plan: BEVPoolPlan) -> Tensor:
    """Sums each interval's features into its cell. Differentiable in feats (and twice).

    Args:
        feats: float (N, C) point features (float32, float64, float16 or bfloat16; the last two accumulate in
            float32), rows as indexed by the plan's coords.
        plan: from `bev_pool_plan` (or `torchsparse.nn.BEVPoolCache.plan`) on the coords of these points.

    Returns:
        (B, C, Z, X, Y) of feats' dtype: every cell the sum of its points' features in input order, empty cells 0.
    """
    z, x, y = plan.grid
    return torch.ops.torchsparse.bev_pool(
        feats, plan.order, plan.starts, plan.lengths, plan.cells, plan.batch_size, z, x, y
    )


def bev_pool(feats: Tensor, coords: Tensor, batch_size: int, grid: Sequence[int]) -> Tensor:
    """BEV pooling without precomputation: `bev_pool_apply(feats, bev_pool_plan(coords, batch_size, grid))`.

    Args:
        feats: float (N, C) point features.
        coords: int32/int64 (N, 4) cell coordinates (x, y, z, b); points outside the grid are dropped.
        batch_size: B.
        grid: (Z, X, Y).

    Returns:
        (B, C, Z, X, Y) of feats' dtype, zero where no point falls.
    """
    if coords.dim() != 2 or coords.shape[0] != feats.shape[0]:
        raise ValueError(
            f"coords must be (N, 4) with N = feats.shape[0] = {feats.shape[0]}, got shape {tuple(coords.shape)}"
        )
    return bev_pool_apply(feats, bev_pool_plan(coords, batch_size, grid))


def bev_pool_plan_portable(coords: Tensor, batch_size: int, grid: Sequence[int]) -> BEVPoolPlan:
    """`bev_pool_plan` through the portable kernels that the CUDA op runs: the very same plan."""
    grid = _grid(grid)
    order, starts, lengths, cells = torch.ops.torchsparse.bev_pool_plan_portable(
        coords, int(batch_size), list(grid)
    )
    return BEVPoolPlan(order, starts, lengths, cells, int(batch_size), grid)


def bev_pool_apply_portable(feats: Tensor, plan: BEVPoolPlan) -> Tensor:
    """`bev_pool_apply` through the portable kernel bodies that the CUDA op runs: equal bit for bit. Not
    differentiable; for tests and benchmarks."""
    z, x, y = plan.grid
    return torch.ops.torchsparse.bev_pool_portable(
        feats, plan.order, plan.starts, plan.lengths, plan.cells, plan.batch_size, z, x, y
    )


def bev_pool_backward_portable(grad_output: Tensor, plan: BEVPoolPlan, num_points: int) -> Tensor:
    """The gradient of `bev_pool_apply` with respect to feats, (num_points, C), through the portable kernel bodies
    that the CUDA op runs: equal to ``torch.ops.torchsparse.bev_pool_backward`` bit for bit."""
    return torch.ops.torchsparse.bev_pool_backward_portable(
        grad_output, plan.order, plan.starts, plan.lengths, plan.cells, num_points
    )


@torch.library.register_fake("torchsparse::bev_pool_plan")
@torch.library.register_fake("torchsparse::bev_pool_plan_portable")
def _(coords, batch_size, grid):
    torch._check_value(coords.dim() == 2 and coords.shape[1] == 4, lambda: "coords must be (N, 4)")
    torch._check_value(len(grid) == 3, lambda: "grid must be (Z, X, Y)")
    ctx = torch.library.get_ctx()
    kept, intervals = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    order = coords.new_empty((kept,), dtype=torch.int64)
    return order, *(coords.new_empty((intervals,), dtype=torch.int64) for _ in range(3))


@torch.library.register_fake("torchsparse::bev_pool")
@torch.library.register_fake("torchsparse::bev_pool_portable")
def _(feats, order, starts, lengths, cells, B, Z, X, Y):
    check_same_device(feats=feats, order=order, starts=starts, lengths=lengths, cells=cells)
    torch._check_value(feats.dim() == 2, lambda: "feats must be (N, C)")
    torch._check_value(order.dim() == 1 and starts.dim() == 1, lambda: "order and starts must be 1-D")
    torch._check_value(
        lengths.shape == starts.shape and cells.shape == starts.shape, lambda: "plan lengths differ"
    )
    torch._check_value(B >= 1 and Z >= 1 and X >= 1 and Y >= 1, lambda: "B, Z, X and Y must be >= 1")
    return feats.new_empty((B, feats.shape[1], Z, X, Y))


@torch.library.register_fake("torchsparse::bev_pool_backward")
@torch.library.register_fake("torchsparse::bev_pool_backward_portable")
def _(grad_output, order, starts, lengths, cells, num_points):
    check_same_device(grad_output=grad_output, order=order, starts=starts, lengths=lengths, cells=cells)
    torch._check_value(grad_output.dim() == 5, lambda: "grad_output must be (B, C, Z, X, Y)")
    torch._check_value(num_points >= 0, lambda: "num_points must be >= 0")
    return grad_output.new_empty((num_points, grad_output.shape[1]))


def _bev_pool_setup(ctx, inputs, output):
    feats, order, starts, lengths, cells = inputs[:5]
    ctx.save_for_backward(order, starts, lengths, cells)
    ctx.num_points = feats.shape[0]


def _bev_pool_backward(ctx, grad_output):
    order, starts, lengths, cells = ctx.saved_tensors
    grad = torch.ops.torchsparse.bev_pool_backward(grad_output, order, starts, lengths, cells, ctx.num_points)
    return grad, None, None, None, None, None, None, None, None


torch.library.register_autograd("torchsparse::bev_pool", _bev_pool_backward, setup_context=_bev_pool_setup)


def _bev_pool_backward_setup(ctx, inputs, output):
    grad_output, order, starts, lengths, cells, _ = inputs
    ctx.save_for_backward(order, starts, lengths, cells)
    ctx.grid = grad_output.shape


def _bev_pool_double_backward(ctx, grad):
    # bev_pool_backward is a gather; its adjoint is the interval sum itself.
    order, starts, lengths, cells = ctx.saved_tensors
    b, _, z, x, y = ctx.grid
    return (
        torch.ops.torchsparse.bev_pool(grad, order, starts, lengths, cells, b, z, x, y),
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "torchsparse::bev_pool_backward", _bev_pool_double_backward, setup_context=_bev_pool_backward_setup
)
