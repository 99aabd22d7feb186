"""Slow, obviously-correct references: Python-loop kernel maps and point-voxel ops, dense-grid convolution and
pooling.

Each reference follows the definitions in torchsparse.conv_output directly: output site o meets input site
``stride * o + base + index_k * dilation`` for kernel index ``index_k`` (per axis); offsets are numbered x fastest
for odd kernel volumes and z fastest for even ones (`kernel_indices`, the engine's own numbering re-exported;
tests/ops/test_kernel_map.py pins it to TorchSparse's order written out).
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torchsparse.ops.kernel_map import kernel_indices

__all__ = [
    "brute_force_generative_coords",
    "brute_force_kernel_map",
    "brute_force_point_voxel_query",
    "brute_force_strided_coords",
    "dense_conv",
    "dense_pool",
    "kernel_indices",
    "reference_conv3d",
    "reference_conv3d_fused",
    "reference_conv3d_weight_grad",
    "reference_devoxelize",
    "reference_voxelize",
]


def _site(o, index, stride, dilation, base):
    return tuple(stride[a] * o[a] + base[a] + index[a] * dilation[a] for a in range(3))


def brute_force_kernel_map(in_coords: Tensor, out_coords: Tensor, kernel_size, stride, dilation, base) -> Tensor:
    """int32 (M, K): row of the input at (b, stride * o + base + index_k * dilation), -1 when absent."""
    rows = {tuple(c): i for i, c in enumerate(in_coords.tolist())}
    indices = kernel_indices(kernel_size)
    nbmap = torch.full((out_coords.shape[0], len(indices)), -1, dtype=torch.int32)
    for m, (b, *o) in enumerate(out_coords.tolist()):
        for k, index in enumerate(indices):
            nbmap[m, k] = rows.get((b, *_site(o, index, stride, dilation, base)), -1)
    return nbmap


def brute_force_strided_coords(coords: Tensor, kernel_size, stride, dilation, base, upper=None) -> Tensor:
    """Sorted unique o with stride * o + base + index_k * dilation an input site (0 <= o < upper if given)."""
    found = set()
    for b, *c in coords.tolist():
        for index in kernel_indices(kernel_size):
            shifted = [c[a] - base[a] - index[a] * dilation[a] for a in range(3)]
            if any(v % s for v, s in zip(shifted, stride)):
                continue
            o = [v // s for v, s in zip(shifted, stride)]
            if upper is None or all(0 <= o[a] < upper[a] for a in range(3)):
                found.add((b, *o))
    return torch.tensor(sorted(found), dtype=torch.int32).reshape(-1, 4)


def brute_force_generative_coords(coords: Tensor, kernel_size, stride, dilation, base) -> Tensor:
    """Sorted unique stride * c + base + index_k * dilation."""
    found = {(b, *_site(c, index, stride, dilation, base)) for b, *c in coords.tolist() for index in kernel_indices(kernel_size)}
    return torch.tensor(sorted(found), dtype=torch.int32).reshape(-1, 4)


def _dense_weight(weight: Tensor, kernel_size, transposed: bool) -> Tensor:
    """(K, C_in, C_out) -> conv3d's (C_out, C_in, kx, ky, kz) or conv_transpose3d's (C_in, C_out, kx, ky, kz)."""
    dense = weight.new_zeros((weight.shape[1], weight.shape[2], *kernel_size))
    for k, (ix, iy, iz) in enumerate(kernel_indices(kernel_size)):
        dense[:, :, ix, iy, iz] = weight[k]
    return dense if transposed else dense.transpose(0, 1)


def _grid(coarse: Tensor, fine: Tensor, kernel_size, stride, dilation, base):
    """Origin of the fine grid and shift m of the coarse grid so that fine index s*(o + m) + index*d is the site
    s*o + base + index*d, plus grid sizes large enough for both sets."""
    m, origin, fine_len, coarse_len = [], [], [], []
    for a in range(3):
        lo_f = int(fine[:, a + 1].min()) if len(fine) else 0
        hi_f = int(fine[:, a + 1].max()) if len(fine) else 0
        lo_c = int(coarse[:, a + 1].min()) if len(coarse) else 0
        hi_c = int(coarse[:, a + 1].max()) if len(coarse) else 0
        s, d, k, b = stride[a], dilation[a], kernel_size[a], base[a]
        shift = max(-(-(b - lo_f) // s), -lo_c, 0)
        g0 = b - s * shift
        length_c = max(hi_c + shift + 1, (hi_f - g0) // s + 1)
        m.append(shift)
        origin.append(g0)
        coarse_len.append(length_c)
        fine_len.append(max(hi_f - g0 + 1, s * (length_c - 1) + d * (k - 1) + 1))
    return m, origin, fine_len, coarse_len


def _densify(coords: Tensor, feats: Tensor, shift, size, batch: int) -> Tensor:
    grid = feats.new_zeros((batch, feats.shape[1], *size))
    for (b, x, y, z), f in zip(coords.tolist(), feats):
        grid[b, :, x + shift[0], y + shift[1], z + shift[2]] = f
    return grid


def _read(grid: Tensor, coords: Tensor, shift) -> Tensor:
    out = [grid[b, :, x + shift[0], y + shift[1], z + shift[2]] for b, x, y, z in coords.tolist()]
    return torch.stack(out) if out else grid.new_zeros((0, grid.shape[1]))


def dense_conv(
    in_coords: Tensor,
    feats: Tensor,
    weight: Tensor,
    out_coords: Tensor,
    kernel_size,
    stride,
    dilation,
    base,
    transposed: bool = False,
) -> Tensor:
    """Sparse convolution computed with torch.nn.functional.conv3d / conv_transpose3d on a dense grid.

    Forward: out[o] = sum_k feats[stride * o + base + index_k * dilation] @ weight[k]. Transposed: the adjoint,
    out[y] = sum over (o, k) with y = stride * o + base + index_k * dilation of feats[o] @ weight[k].

    Args:
        in_coords, out_coords: int32 (N, 4), (M, 4) sites; feats (N, C_in); weight (K, C_in, C_out).

    Returns:
        (M, C_out) dense result read at out_coords.
    """
    coarse, fine = (in_coords, out_coords) if transposed else (out_coords, in_coords)
    m, origin, fine_len, coarse_len = _grid(coarse, fine, kernel_size, stride, dilation, base)
    batch = int(max(in_coords[:, 0].max() if len(in_coords) else 0, out_coords[:, 0].max() if len(out_coords) else 0)) + 1
    dense_w = _dense_weight(weight, kernel_size, transposed)
    fine_shift = [-g for g in origin]
    if transposed:
        grid = _densify(in_coords, feats, m, coarse_len, batch)
        out = F.conv_transpose3d(grid, dense_w, stride=tuple(stride), dilation=tuple(dilation))
        out = F.pad(out, [0, max(0, fine_len[2] - out.shape[4]), 0, max(0, fine_len[1] - out.shape[3]), 0, max(0, fine_len[0] - out.shape[2])])
        return _read(out, out_coords, fine_shift)
    grid = _densify(in_coords, feats, fine_shift, fine_len, batch)
    out = F.conv3d(grid, dense_w, stride=tuple(stride), dilation=tuple(dilation))
    return _read(out, out_coords, m)


def dense_pool(
    in_coords: Tensor, feats: Tensor, out_coords: Tensor, kernel_size, stride, dilation, base, reduce: str
) -> Tensor:
    """Max or mean over the present sites of each window, via dense max_pool3d / conv3d on the grid.

    Empty sites are -inf for "max" and excluded from the count for "mean"; a window without sites gives 0.
    """
    m, origin, fine_len, _ = _grid(out_coords, in_coords, kernel_size, stride, dilation, base)
    batch = int(max(in_coords[:, 0].max(), out_coords[:, 0].max())) + 1
    shift = [-g for g in origin]
    occupied = _densify(in_coords, feats.new_ones((len(in_coords), 1)), shift, fine_len, batch)
    if reduce == "max":
        grid = _densify(in_coords, feats, shift, fine_len, batch)
        grid = grid.masked_fill(occupied == 0, float("-inf"))
        out = F.max_pool3d(grid, tuple(kernel_size), tuple(stride), dilation=tuple(dilation))
        out = out.masked_fill(torch.isinf(out), 0.0)
        return _read(out, out_coords, m)
    ones = feats.new_ones((1, 1, *kernel_size))
    total = F.conv3d(_densify(in_coords, feats, shift, fine_len, batch).flatten(0, 1)[:, None], ones,
                     stride=tuple(stride), dilation=tuple(dilation))
    total = total.view(batch, feats.shape[1], *total.shape[2:])
    count = F.conv3d(occupied, ones, stride=tuple(stride), dilation=tuple(dilation))
    return _read(total / count.clamp_min(1), out_coords, m)


def brute_force_point_voxel_query(points: Tensor, coords: Tensor, stride, neighbours: int) -> tuple[Tensor, Tensor]:
    """Python-loop point query with TorchSparse v2.1 trilinear weights (see ops.point_voxel_query).

    Returns:
        idx int64 (N, neighbours) and float64 weights (N, neighbours).
    """
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    deltas = [(0, 0, 0)] if neighbours == 1 else list(itertools.product((0, 1), repeat=3))
    idx = torch.full((len(points), neighbours), -1, dtype=torch.int64)
    weights = torch.zeros((len(points), neighbours), dtype=torch.float64)
    for n, (b, *p) in enumerate(points.double().tolist()):
        q = [p[a] / stride[a] for a in range(3)]
        f = [math.floor(v) for v in q]
        for k, d in enumerate(deltas):
            row = rows.get((int(b), *(f[a] + d[a] for a in range(3))), -1)
            if row < 0:
                continue
            idx[n, k] = row
            weights[n, k] = 1.0 if neighbours == 1 else math.prod(q[a] - f[a] if d[a] else f[a] + 1 - q[a] for a in range(3))
        if neighbours == 8:
            weights[n] /= weights[n].sum() + 1e-8
    return idx, weights


def reference_voxelize(feats: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
    """(M, C): per-voxel sum of feats over idx (-1 dropped) divided by counts, zero where counts is 0."""
    out = feats.new_zeros((len(counts), feats.shape[1]))
    for n, m in enumerate(idx.tolist()):
        if m >= 0:
            out[m] += feats[n]
    return torch.where((counts > 0).unsqueeze(1), out / counts.clamp(min=1).unsqueeze(1).to(feats.dtype), 0)


def reference_devoxelize(feats: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """(N, C): sum over present k of weights[n, k] * feats[idx[n, k]]."""
    out = feats.new_zeros((idx.shape[0], feats.shape[1]))
    for n, row in enumerate(idx.tolist()):
        for k, m in enumerate(row):
            if m >= 0:
                out[n] += weights[n, k] * feats[m]
    return out


def _offsets(sizes: Tensor) -> list[int]:
    return [k for k, n in enumerate(sizes.tolist()) for _ in range(n)]


def reference_conv3d(
    input: Tensor, weight: Tensor, in_rows: Tensor, out_rows: Tensor, sizes: Tensor, num_out: int
) -> Tensor:
    """(num_out, C_out) in float64: out[o] = sum over pairs (i, o) of offset k of input[i] @ weight[k] (ops.conv3d)."""
    out = torch.zeros((num_out, weight.shape[2]), dtype=torch.float64)
    for i, o, k in zip(in_rows.tolist(), out_rows.tolist(), _offsets(sizes)):
        out[o] += input[i].double() @ weight[k].double()
    return out


def reference_conv3d_weight_grad(
    input: Tensor, grad_output: Tensor, in_rows: Tensor, out_rows: Tensor, sizes: Tensor
) -> Tensor:
    """(K, C_in, C_out) in float64: grad[k] = sum over pairs (i, o) of offset k of outer(input[i], grad_output[o])."""
    grad = torch.zeros((len(sizes), input.shape[1], grad_output.shape[1]), dtype=torch.float64)
    for i, o, k in zip(in_rows.tolist(), out_rows.tolist(), _offsets(sizes)):
        grad[k] += torch.outer(input[i].double(), grad_output[o].double())
    return grad


def reference_conv3d_fused(
    input: Tensor, weight: Tensor, nbmap: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """(M, C_out) in float64: out[o] = sum over k with nbmap[o, k] >= 0 of input[nbmap[o, k]] @ weight[k], then
    + bias, + residual[o], then max(., 0) when relu (ops.conv3d_fused with its epilogue), one row at a time."""
    out = torch.zeros((nbmap.shape[0], weight.shape[2]), dtype=torch.float64)
    for o, row in enumerate(nbmap.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                out[o] += input[i].double() @ weight[k].double()
        if bias is not None:
            out[o] += bias.double()
        if residual is not None:
            out[o] += residual[o].double()
        if relu:
            out[o] = out[o].clamp_min(0)
    return out
