"""Sparse local pooling (max, average over present neighbours) and per-sample global pooling."""

from collections.abc import Sequence

import torch
from torch import Tensor

from torchsparse.conv_output import conv_output
from torchsparse.tensor import SparseTensor, to_triple

__all__ = ["avg_pool3d", "global_avg_pool", "global_max_pool", "max_pool3d"]


def _window(input, kernel_size, stride, padding, dilation, downsample_mode):
    ks = to_triple(kernel_size, "kernel_size")
    st = ks if stride is None else to_triple(stride, "stride")
    return conv_output(
        input, ks, st, to_triple(dilation, "dilation"), to_triple(padding, "padding", 0), False, False,
        downsample_mode,
    )


def max_pool3d(
    input: SparseTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    downsample_mode: str = "minkowski",
) -> SparseTensor:
    """Maximum over the present sites of each window (same windows and output sites as `conv3d`).

    Args:
        input: features (N, C).
        kernel_size, stride (default kernel_size), padding, dilation, downsample_mode: as in `conv3d`.

    Returns:
        Features (M, C); an output site whose window holds no input (possible only for windows smaller than
        the stride) is 0.
    """
    out = _window(input, kernel_size, stride, padding, dilation, downsample_mode)
    rows = out.kmap.out_rows.long()[:, None].expand(-1, input.feats.shape[1])
    feats = input.feats.new_zeros((out.coords.shape[0], input.feats.shape[1]))
    feats = feats.scatter_reduce(0, rows, input.feats[out.kmap.in_rows.long()], "amax", include_self=False)
    return SparseTensor._derived(feats, out.coords, out.stride, out.spatial_range, input.cache)


def avg_pool3d(
    input: SparseTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    downsample_mode: str = "minkowski",
) -> SparseTensor:
    """Mean over the present sites of each window (empty sites are not counted); arguments as `max_pool3d`.

    Deterministic: every output row adds its window's features in offset order (no atomics), so the result is
    bitwise the same on every run and equal on CPU and CUDA. The backward pass (indexing's sorted accumulation)
    is deterministic on CUDA too.
    """
    out = _window(input, kernel_size, stride, padding, dilation, downsample_mode)
    feats = input.feats
    nbmap = out.kmap.nbmap  # int32 (M, K): input row of (output, offset), -1 where absent
    present = nbmap >= 0
    # Absent neighbours read an appended zero row.
    rows = torch.where(present, nbmap, feats.shape[0]).long()
    padded = torch.cat([feats, feats.new_zeros((1, feats.shape[1]))])
    total = feats.new_zeros((nbmap.shape[0], feats.shape[1]))
    for k in range(nbmap.shape[1]):
        total = total + padded[rows[:, k]]
    count = present.sum(1).clamp_min(1).to(feats.dtype)
    return SparseTensor._derived(total / count[:, None], out.coords, out.stride, out.spatial_range, input.cache)


def _batch(input: SparseTensor) -> tuple[Tensor, int]:
    return input.coords[:, 0].long(), input.num_samples


def global_avg_pool(input: SparseTensor) -> Tensor:
    """Per-sample mean of the features: (B, C), B = spatial_range[0] or max batch index + 1; 0 for empty samples."""
    batch, size = _batch(input)
    total = input.feats.new_zeros((size, input.feats.shape[1])).index_add(0, batch, input.feats)
    count = torch.bincount(batch, minlength=size).clamp_min(1).to(input.feats.dtype)
    return total / count[:, None]


def global_max_pool(input: SparseTensor) -> Tensor:
    """Per-sample maximum of the features: (B, C); 0 for empty samples."""
    batch, size = _batch(input)
    index = batch[:, None].expand(-1, input.feats.shape[1])
    out = input.feats.new_zeros((size, input.feats.shape[1]))
    return out.scatter_reduce(0, index, input.feats, "amax", include_self=False)
