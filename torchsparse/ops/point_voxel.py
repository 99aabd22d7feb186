"""Point-voxel ops of SPVConv (csrc/point_voxel/): point queries against voxels, voxelize and devoxelize.

Semantics follow TorchSparse v2.1 so that SPVCNN / SPVNAS checkpoints reproduce: trilinear devoxelization
over the 8 voxels at offsets {0, 1}^3 around floor(p / stride), weights of absent voxels zeroed and the rest
renormalised by (sum + 1e-8).

The CUDA kernels run portable per-element bodies (csrc/point_voxel/point_voxel_kernels.h) that equal the CPU ops bit
for bit; point_voxel_query runs them on the CPU too, and the ``*_portable`` functions run the others' on the CPU
(where dedicated row loops are faster) so that tests check the GPU's logic without a GPU.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

import torchsparse._C  # noqa: F401
from torchsparse.ops.checks import check_same_device
from torchsparse.ops.hashing import HashTable


def point_voxel_query(
    points: Tensor, table: HashTable, stride: Sequence[int], neighbours: int
) -> tuple[Tensor, Tensor]:
    """Finds the voxels of a tensor at `stride` around float points.

    Args:
        points: float32/float64 (N, 4) as (batch, x, y, z) in stride-1 voxel units; batch integral, finite.
        table: hash table over `pack_coords` of the voxel tensor's (compact) coordinates.
        stride: the voxel tensor's stride per axis.
        neighbours: 1 for the voxel floor(p / stride) alone, 8 for the trilinear neighbourhood.

    Returns:
        idx int64 (N, neighbours), rows of the voxels or -1 where absent, in the order (0,0,0), (0,0,1),
        (0,1,0), ..., (1,1,1) (x slowest, z fastest); weights (N, neighbours) of the points' dtype: 1 / 0 for
        one neighbour, renormalised trilinear weights for eight (summing to 1 - 1e-8 where any voxel exists, 0
        where none does).
    """
    return torch.ops.torchsparse.point_voxel_query(points, table.keys, table.values, list(stride), neighbours)


def point_voxel_count(idx: Tensor, num_voxels: int) -> Tensor:
    """int64 (N,) voxel rows in [-1, num_voxels) -> int64 (num_voxels,) number of points per voxel (-1 skipped)."""
    return torch.ops.torchsparse.point_voxel_count(idx, num_voxels)


def voxelize(feats: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
    """Scatter mean of point features into voxels. Differentiable in feats.

    Args:
        feats: float32/float64 (N, C) point features.
        idx: int64 (N,) voxel of each point in [-1, M); -1 drops the point.
        counts: int64 (M,) divisor per voxel, normally `point_voxel_count(idx, M)`.

    Returns:
        (M, C): the sum of each voxel's point features divided by its count; zero rows for count 0.
    """
    return torch.ops.torchsparse.voxelize(feats, idx, counts)


def devoxelize(feats: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """Weighted gather of voxel features at points. Differentiable in feats and weights.

    Args:
        feats: float32/float64 (M, C) voxel features.
        idx: int64 (N, K) voxel rows in [-1, M), -1 for absent (`point_voxel_query`).
        weights: (N, K) of feats' dtype.

    Returns:
        (N, C): out[n] = sum over present k of weights[n, k] * feats[idx[n, k]].
    """
    return torch.ops.torchsparse.devoxelize(feats, idx, weights)


def point_voxel_count_portable(idx: Tensor, num_voxels: int) -> Tensor:
    """`point_voxel_count` through the portable kernel body that the CUDA op runs (integer atomics); same result."""
    return torch.ops.torchsparse.point_voxel_count_portable(idx, num_voxels)


def voxelize_portable(feats: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
    """`voxelize` through the portable kernel bodies that the CUDA op runs: equal to it bit for bit.

    Not differentiable; for tests and benchmarks of the CUDA kernels' logic on the CPU.
    """
    return torch.ops.torchsparse.voxelize_portable(feats, idx, counts)


def devoxelize_portable(feats: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """`devoxelize` through the portable kernel body that the CUDA op runs: equal to it bit for bit.

    Not differentiable; for tests and benchmarks of the CUDA kernels' logic on the CPU.
    """
    return torch.ops.torchsparse.devoxelize_portable(feats, idx, weights)


def devoxelize_backward_portable(
    grad_output: Tensor, idx: Tensor, weights: Tensor, num_voxels: int
) -> Tensor:
    """The gradient of `devoxelize` with respect to feats, (num_voxels, C), through the portable kernel bodies that
    the CUDA op runs: equal to ``torch.ops.torchsparse.devoxelize_backward`` bit for bit."""
    return torch.ops.torchsparse.devoxelize_backward_portable(grad_output, idx, weights, num_voxels)


@torch.library.register_fake("torchsparse::point_voxel_query")
def _(points, table_keys, table_values, stride, neighbours):
    check_same_device(points=points, table_keys=table_keys, table_values=table_values)
    torch._check_value(points.dim() == 2 and points.shape[1] == 4, lambda: "points must be (N, 4)")
    torch._check_value(neighbours in (1, 8), lambda: "neighbours must be 1 or 8")
    n = points.shape[0]
    return points.new_empty((n, neighbours), dtype=torch.int64), points.new_empty((n, neighbours))


@torch.library.register_fake("torchsparse::point_voxel_count")
@torch.library.register_fake("torchsparse::point_voxel_count_portable")
def _(idx, num_voxels):
    torch._check_value(idx.dim() == 1 and idx.dtype == torch.int64, lambda: "idx must be int64 (N,)")
    torch._check_value(num_voxels >= 0, lambda: "num_voxels must be >= 0")
    return idx.new_empty(num_voxels)


@torch.library.register_fake("torchsparse::voxelize")
@torch.library.register_fake("torchsparse::voxelize_portable")
def _(feats, idx, counts):
    check_same_device(feats=feats, idx=idx, counts=counts)
    torch._check_value(feats.dim() == 2, lambda: "feats must be (N, C)")
    torch._check_value(idx.dim() == 1 and idx.shape[0] == feats.shape[0], lambda: "idx must be (N,)")
    return feats.new_empty((counts.shape[0], feats.shape[1]))


@torch.library.register_fake("torchsparse::devoxelize")
@torch.library.register_fake("torchsparse::devoxelize_portable")
def _(feats, idx, weights):
    check_same_device(feats=feats, idx=idx, weights=weights)
    torch._check_value(feats.dim() == 2, lambda: "feats must be (M, C)")
    torch._check_value(
        idx.dim() == 2 and weights.shape == idx.shape, lambda: "idx and weights must be (N, K)"
    )
    return feats.new_empty((idx.shape[0], feats.shape[1]))


@torch.library.register_fake("torchsparse::devoxelize_backward")
@torch.library.register_fake("torchsparse::devoxelize_backward_portable")
def _(grad_output, idx, weights, num_voxels):
    check_same_device(grad_output=grad_output, idx=idx, weights=weights)
    torch._check_value(grad_output.dim() == 2, lambda: "grad_output must be (N, C)")
    torch._check_value(num_voxels >= 0, lambda: "num_voxels must be >= 0")
    return grad_output.new_empty((num_voxels, grad_output.shape[1]))


def _voxelize_setup(ctx, inputs, output):
    _, idx, counts = inputs
    ctx.save_for_backward(idx, counts)


def _voxelize_backward(ctx, grad_output):
    idx, counts = ctx.saved_tensors
    # Each point receives its voxel's gradient divided by the voxel's count; dropped points receive zero.
    rows = idx.clamp(min=0)
    scale = (idx >= 0).to(grad_output.dtype) / counts.clamp(min=1).to(grad_output.dtype).index_select(0, rows)
    return grad_output.index_select(0, rows) * scale.unsqueeze(1), None, None


torch.library.register_autograd("torchsparse::voxelize", _voxelize_backward, setup_context=_voxelize_setup)


def _devoxelize_setup(ctx, inputs, output):
    feats, idx, weights = inputs
    ctx.save_for_backward(feats, idx, weights)


def _devoxelize_backward(ctx, grad_output):
    feats, idx, weights = ctx.saved_tensors
    grad_feats = grad_weights = None
    if ctx.needs_input_grad[0]:
        grad_feats = torch.ops.torchsparse.devoxelize_backward(grad_output, idx, weights, feats.shape[0])
    if ctx.needs_input_grad[2]:
        gathered = feats.index_select(0, idx.clamp(min=0).reshape(-1)).reshape(*idx.shape, feats.shape[1])
        grad_weights = (gathered * grad_output.unsqueeze(1)).sum(-1) * (idx >= 0).to(grad_output.dtype)
    return grad_feats, None, grad_weights


torch.library.register_autograd(
    "torchsparse::devoxelize", _devoxelize_backward, setup_context=_devoxelize_setup
)
