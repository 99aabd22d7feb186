"""Where a convolution's outputs live and which inputs they read: output coordinates and kernel maps of every
convolution semantics, built by the ops of `torchsparse.ops.kernel_map` and cached on a tensor's `TensorCache`.

Semantics (docs/conventions.md §1); ``base`` is the per-axis offset of kernel index 0:
- submanifold (stride 1): outputs = inputs, base = (-k // 2 + 1) * d (centred for odd k);
- strided, ``mode="minkowski"``: outputs = unique(floor(c / s)), same base;
- strided, ``mode="spconv"``: outputs = every o reached by some offset, base = -padding, clipped to the
  output grid when the spatial range is known;
- transposed: outputs = the finer level's coordinates, pairs = the forward pairs swapped;
- generative transposed: outputs = unique(s * c + base + index_k * d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from torchsparse import ops
from torchsparse.tensor import SparseTensor, Stride, TensorCache, check_unique

MODES = ("minkowski", "spconv")


@dataclass(frozen=True)
class KernelMap:
    """Which input rows each output row of one convolution reads, in two layouts.

    Attributes:
        nbmap: int32 (M, K) output-stationary table: the input row of (output m, offset k), -1 where absent.
        in_rows: int32 (P,) input rows of the pairs.
        out_rows: int32 (P,) output rows; pairs are grouped by kernel offset, and within one offset every input
            row and every output row occurs at most once.
        sizes: int64 (K,) on the CPU, number of pairs per offset.
        orders: row orders of the sorted implicit GEMM by split count, built on first use (`sorted_orders`); a
            memo of this map's own data, shared by every layer that uses the map in one pass.
        transposed_from: the map this one is the transpose of (`transposed`), else None.
    """

    nbmap: Tensor
    in_rows: Tensor
    out_rows: Tensor
    sizes: Tensor
    orders: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)
    transposed_from: KernelMap | None = field(default=None, repr=False, compare=False)

    def sorted_orders(self, split: int) -> Tensor:
        """int32 (split, M) output-row orders for `ops.implicit_gemm` (`ops.implicit_gemm_orders`), memoised."""
        if split not in self.orders:
            self.orders[split] = ops.implicit_gemm_orders(self.nbmap, split)
        return self.orders[split]

    def transposed(self, num_in: int) -> KernelMap:
        """The map of the transposed convolution (inputs and outputs swapped), whose outputs are the num_in rows."""
        kernel_volume = self.nbmap.shape[1]
        offset = torch.repeat_interleave(
            torch.arange(kernel_volume, device=self.in_rows.device), self.sizes.to(self.in_rows.device),
            output_size=self.in_rows.shape[0],
        )
        nbmap = self.nbmap.new_full((num_in, kernel_volume), -1)
        nbmap = nbmap.index_put((self.in_rows.long(), offset), self.out_rows)
        # Pairs from the new table, not these pairs swapped: those are ordered by this map's outputs, while
        # ops.conv3d_fused needs them ascending in the new outputs within each offset (input rows need not be sorted).
        return KernelMap(nbmap, *ops.kernel_map_pairs(nbmap), transposed_from=self)


@dataclass(frozen=True)
class ConvOutput:
    """Kernel map plus where the output lives: coords int32 (M, 4), stride, spatial range or None."""

    kmap: KernelMap
    coords: Tensor
    stride: Stride
    spatial_range: tuple[int, int, int, int] | None


def centred_base(kernel_size: Stride, dilation: Stride) -> Stride:
    """Offset of kernel index 0 in TorchSparse's convention: -1 for k = 3, 0 for k = 2, -2 for k = 5 (× d)."""
    return tuple((-k // 2 + 1) * d for k, d in zip(kernel_size, dilation))  # type: ignore[return-value]


def coord_index(cache: TensorCache, stride: Stride, coords: Tensor) -> ops.SortedIndex:
    """Sorted index of `coords`, cached per stride; raises ValueError on duplicate coordinates."""
    entry = cache.indices.get(stride)
    if entry is not None and entry[0] is coords:
        return entry[1]
    index, repeated = ops.sorted_index(coords)
    check_unique(repeated)
    cache.indices[stride] = (coords, index)
    return index


def _pairs(nbmap: Tensor) -> KernelMap:
    return KernelMap(nbmap, *ops.kernel_map_pairs(nbmap))


def _divide(stride: Stride, by: Stride, what: str) -> Stride:
    if any(s % b for s, b in zip(stride, by)):
        raise ValueError(f"{what}: tensor stride {stride} is not divisible by the conv stride {by}")
    return tuple(s // b for s, b in zip(stride, by))  # type: ignore[return-value]


def _forward(
    cache: TensorCache, stride_in: Stride, in_coords: Tensor, out_coords: Tensor | None,
    kernel_size, stride, dilation, base, mode, upper=None,
) -> tuple[KernelMap, Tensor]:
    """Forward map from `in_coords` (at tensor stride `stride_in`) to `out_coords`, cached in `cache`.

    When out_coords is None the output sites follow from the semantics: the inputs for stride 1, else
    unique(floor(c / s)) for minkowski and every reached site (below `upper` if given) for spconv; where those
    sites are exactly the ones the kernel reaches, their generation yields the map too, with no search.
    """
    key = ("forward", stride_in, kernel_size, stride, dilation, base, mode, upper)
    entry = cache.kmaps.get(key)
    if entry is not None and entry[0] is in_coords and (out_coords is None or entry[1] is out_coords):
        return entry[2], entry[1]
    index = coord_index(cache, stride_in, in_coords)  # also rejects duplicate coordinates
    nbmap = None
    if out_coords is None:
        if stride == (1, 1, 1):
            out_coords = in_coords
        elif mode == "spconv":
            out_coords, nbmap = ops.strided_coords(in_coords, kernel_size, stride, dilation, base, upper)
        else:
            out_coords, floor_map = ops.strided_coords(in_coords, stride, stride, (1, 1, 1), (0, 0, 0))
            if kernel_size == stride and dilation == (1, 1, 1) and base == (0, 0, 0):
                nbmap = floor_map
    if nbmap is None:
        symmetric = (
            out_coords is in_coords and stride == (1, 1, 1) and all(k % 2 for k in kernel_size)
            and base == centred_base(kernel_size, dilation)
        )
        nbmap = ops.kernel_map(index, out_coords, kernel_size, stride, dilation, base, symmetric)
    kmap = _pairs(nbmap)
    cache.kmaps[key] = (in_coords, out_coords, kmap)
    return kmap, out_coords


def conv_output(
    x: SparseTensor,
    kernel_size: Stride,
    stride: Stride,
    dilation: Stride,
    padding: Stride,
    transposed: bool,
    generative: bool,
    mode: str,
) -> ConvOutput:
    """Output sites and kernel map of a convolution (or pooling window) applied to x.

    Args:
        x: input tensor; its cache supplies and receives coordinates, sorted indices and maps.
        kernel_size, stride, dilation: per-axis, >= 1. padding: per-axis, >= 0, used by mode "spconv" only.
        transposed: map back to the finer level recorded in the cache (stride must divide x.stride).
        generative: transposed with newly generated output sites.
        mode: "minkowski" or "spconv" semantics for strided and transposed convolutions.

    Returns:
        ConvOutput with the map and the output coordinates, stride and spatial range.
    """
    # A named range, so that profiles (and tools/segment.py) can tell map building from the arithmetic.
    with torch.profiler.record_function("torchsparse.kernel_map"):
        return _conv_output(x, kernel_size, stride, dilation, padding, transposed, generative, mode)


def _conv_output(x, kernel_size, stride, dilation, padding, transposed, generative, mode) -> ConvOutput:
    if mode not in MODES:
        raise ValueError(f"downsample_mode must be one of {MODES}, got {mode!r}")
    spconv = mode == "spconv"
    if mode == "minkowski" and any(padding):
        raise ValueError("padding is only used with downsample_mode='spconv'; minkowski semantics ignore it")
    # Stride-1 maps (submanifold, and the transposed conv that inverts one) are centred in both semantics.
    unit = stride == (1, 1, 1) and not generative
    base = tuple(-p for p in padding) if spconv and not unit else centred_base(kernel_size, dilation)
    if unit:
        mode = "minkowski"
    size = None if x.spatial_range is None else x.spatial_range[1:]
    batch = None if x.spatial_range is None else x.spatial_range[:1]

    if generative:
        out_stride = _divide(x.stride, stride, "generative transposed conv")
        coord_index(x.cache, x.stride, x.coords)  # rejects duplicate coordinates
        out_coords, nbmap = ops.generative_coords(x.coords, kernel_size, stride, dilation, base)
        forward = _pairs(nbmap)  # the strided map from the new sites back to x's, stationary over x's rows
        out_range = None
        if size is not None:
            out_range = batch + tuple(
                (n - 1) * s + b + (k - 1) * d + 1 for n, s, b, k, d in zip(size, stride, base, kernel_size, dilation)
            )
        return ConvOutput(forward.transposed(out_coords.shape[0]), out_coords, out_stride, out_range)

    if transposed:
        out_stride = _divide(x.stride, stride, "transposed conv")
        fine_coords = x.coords if out_stride == x.stride else x.cache.coords.get(out_stride)
        if fine_coords is None:
            raise ValueError(
                f"transposed conv to stride {out_stride} needs the coordinates of that level, but this tensor's "
                "cache has none; use generative=True to create new sites"
            )
        key = ("transposed", out_stride, kernel_size, stride, dilation, base, mode)
        entry = x.cache.kmaps.get(key)
        if entry is not None and entry[0] is x.coords and entry[1] is fine_coords:
            kmap = entry[2]
        else:
            forward, _ = _forward(x.cache, out_stride, fine_coords, x.coords, kernel_size, stride, dilation, base, mode)
            kmap = forward.transposed(fine_coords.shape[0])
            x.cache.kmaps[key] = (x.coords, fine_coords, kmap)
        fine_range = x.spatial_range if out_stride == x.stride else x.cache.spatial_ranges.get(out_stride)
        return ConvOutput(kmap, fine_coords, out_stride, fine_range)

    upper = None
    out_range = x.spatial_range
    if not unit and size is not None:
        if spconv:
            upper = tuple(
                (n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip(size, padding, dilation, kernel_size, stride)
            )
        else:
            upper = tuple((n - 1) // s + 1 for n, s in zip(size, stride))
        if min(upper) <= 0:
            raise ValueError(f"conv output grid {upper} is empty for spatial range {x.spatial_range}")
        out_range = batch + upper
    kmap, out_coords = _forward(
        x.cache, x.stride, x.coords, None, kernel_size, stride, dilation, base, mode, upper if spconv else None
    )
    out_stride = tuple(a * b for a, b in zip(x.stride, stride))
    return ConvOutput(kmap, out_coords, out_stride, out_range)  # type: ignore[arg-type]
