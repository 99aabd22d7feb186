"""Kernel maps and output coordinates of sparse convolutions (csrc/kernel_map/).

A convolution connects output site ``o`` with input site ``stride * o + base + index_k * dilation`` (per axis,
``index_k`` in ``[0, kernel_size)``) for each kernel offset ``k``. Offsets are ordered as in TorchSparse: x
fastest when the kernel volume is odd, z fastest when it is even; `kernel_indices` lists them, read from the C++
that numbers them.

Every op runs the same kernel bodies on the CPU and on CUDA (csrc/kernel_map/kernel_map_kernels.h) and gives
identical results on both, independent of the number of threads.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from torchsparse import _C
from torchsparse.ops.checks import check_same_device
from torchsparse.ops.hashing import pack_coords

Triple = Sequence[int]


def kernel_indices(kernel_size: Triple) -> list[tuple[int, int, int]]:
    """Per-axis kernel indices (ix, iy, iz), each in [0, kernel_size), of the offsets k = 0..K-1 in the order every
    op numbers them: x fastest when the kernel volume is odd, else z fastest (defined once, in
    csrc/common/coords.h, ``KernelGeometry::index``).

    Raises:
        ValueError: kernel_size values outside [1, 65536].
    """
    if len(kernel_size) != 3:
        raise ValueError(f"kernel_size must be 3 ints, got {kernel_size!r}")
    return _C.kernel_indices(*(int(k) for k in kernel_size))


class SortedIndex(NamedTuple):
    """Input sites as sorted packed keys, the form `kernel_map` merges against.

    Attributes:
        keys: int64 (N,) packed keys (`pack_coords`), ascending.
        rows: int64 (N,) the row of each key in the coordinate tensor it was built from.
    """

    keys: Tensor
    rows: Tensor


def sorted_index(coords: Tensor) -> tuple[SortedIndex, Tensor]:
    """Sorts the packed keys of int32 (N, 4) coordinates.

    Returns:
        The index and an int64 0-dim tensor with the number of repeated keys (0 for unique coordinates).
    """
    keys, rows = torch.sort(pack_coords(coords))
    return SortedIndex(keys, rows), (keys[1:] == keys[:-1]).sum()


def kernel_map(
    index: SortedIndex,
    out_coords: Tensor,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
    base: Triple,
    symmetric: bool = False,
) -> Tensor:
    """Output-stationary neighbour table, found by merging each offset's shifted keys with the sorted inputs.

    Args:
        index: sorted index of the input coordinates (`sorted_index`), keys unique.
        out_coords: int32 (M, 4) output sites; sorted outputs (as produced by every op here) make the merge
            stream through memory, unsorted ones are correct but slower.
        kernel_size, stride, dilation, base: per-axis kernel geometry (module docstring).
        symmetric: out_coords are the indexed sites themselves (row for row) and the map is submanifold with a
            centred odd kernel: half the offsets are searched and the others mirrored.

    Returns:
        int32 (M, K) nbmap: input row of (output m, offset k), -1 where that input site is absent.
    """
    return torch.ops.torchsparse.kernel_map(
        index.keys, index.rows, out_coords, list(kernel_size), list(stride), list(dilation), list(base), symmetric
    )


def kernel_map_pairs(nbmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lists the present entries of an nbmap grouped by offset.

    Args:
        nbmap: int32 (M, K) from `kernel_map`.

    Returns:
        in_rows int32 (P,), out_rows int32 (P,) grouped by offset and ascending in output row within one
        offset, and sizes int64 (K,) on the CPU with the number of pairs per offset. For a CUDA nbmap, sizes is
        still a CPU tensor (the convolutions slice by it on the host): one device-to-host copy per call.
    """
    return torch.ops.torchsparse.kernel_map_pairs(nbmap)


def strided_coords(
    coords: Tensor,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
    base: Triple,
    upper: Triple | None = None,
) -> tuple[Tensor, Tensor]:
    """Output sites of a strided convolution, with its kernel map.

    Args:
        coords: int32 (N, 4) unique input sites, batch indices in [0, 32767] (ValueError otherwise).
        kernel_size, stride, dilation, base: kernel geometry (module docstring).
        upper: if given, keep only outputs with 0 <= o < upper per axis (spconv's output grid).

    Returns:
        coords int32 (M, 4): unique sites o such that some offset k maps o onto an input site, sorted by
        (batch, x, y, z) (with kernel_size = stride, base 0, dilation 1: unique(floor(c / stride))); and nbmap
        int32 (M, K): the input row of (output m, offset k), -1 where absent, as `kernel_map` would find it.
    """
    return torch.ops.torchsparse.strided_coords(
        coords, list(kernel_size), list(stride), list(dilation), list(base), None if upper is None else list(upper)
    )


def generative_coords(
    coords: Tensor, kernel_size: Triple, stride: Triple, dilation: Triple, base: Triple
) -> tuple[Tensor, Tensor]:
    """Output sites of a generative transposed convolution, with the map linking them to the inputs.

    Args:
        coords: int32 (N, 4) unique input (coarse) sites, batch indices in [0, 32767]; every new site must lie in
            the packable range (ValueError otherwise).
        kernel_size, stride, dilation, base: kernel geometry (module docstring).

    Returns:
        coords int32 (M, 4): unique ``stride * c + base + index_k * dilation`` over sites c and offsets k,
        sorted by (batch, x, y, z); and nbmap int32 (N, K): the output row reached from (input n, offset k),
        i.e. the map of the strided convolution from the new sites back to the inputs.
    """
    return torch.ops.torchsparse.generative_coords(coords, list(kernel_size), list(stride), list(dilation), list(base))


def _volume(kernel_size: Sequence[int]) -> int:
    return kernel_size[0] * kernel_size[1] * kernel_size[2]


def _data_dependent_size(num_inputs) -> int | torch.SymInt:
    """Size of an output that depends on the data of `num_inputs` input rows: an unbacked symbol, but exactly 0
    when the input is statically empty (an empty input yields no sites and no pairs). Inductor cannot index a
    dimension of static size 0 with an unbacked number of rows, so the 0 must be known when tracing."""
    if statically_known_true(num_inputs == 0):
        return 0
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("torchsparse::kernel_map")
def _(sorted_keys, sorted_rows, out_coords, kernel_size, stride, dilation, base, symmetric=False):
    check_same_device(sorted_keys=sorted_keys, sorted_rows=sorted_rows, out_coords=out_coords)
    torch._check_value(out_coords.dim() == 2 and out_coords.shape[1] == 4, lambda: "out_coords must be (M, 4)")
    return out_coords.new_empty((out_coords.shape[0], _volume(kernel_size)), dtype=torch.int32)


@torch.library.register_fake("torchsparse::kernel_map_pairs")
def _(nbmap):
    torch._check_value(nbmap.dim() == 2 and nbmap.dtype == torch.int32, lambda: "nbmap must be int32 (M, K)")
    rows = nbmap.new_empty(_data_dependent_size(nbmap.shape[0] * nbmap.shape[1]))
    return rows, rows.clone(), torch.empty(nbmap.shape[1], dtype=torch.int64, device="cpu")


def _fake_coords(coords, kernel_size, table_rows):
    torch._check_value(coords.dim() == 2 and coords.shape[1] == 4, lambda: "coords must be (N, 4)")
    sites = coords.new_empty((_data_dependent_size(coords.shape[0]), 4))
    rows = sites.shape[0] if table_rows is None else table_rows
    return sites, coords.new_empty((rows, _volume(kernel_size)))


@torch.library.register_fake("torchsparse::strided_coords")
def _(coords, kernel_size, stride, dilation, base, upper):
    return _fake_coords(coords, kernel_size, None)


@torch.library.register_fake("torchsparse::generative_coords")
def _(coords, kernel_size, stride, dilation, base):
    return _fake_coords(coords, kernel_size, coords.shape[0])
