"""Regression tests for the crashes, hangs and silent errors an adversarial user found in the registered ops.

Each test calls `torch.ops.torchsparse.*` directly, as torch.compile, torch.export and users do, with the input
that used to crash (SIGSEGV, heap corruption), hang, or return wrong or uninitialised memory, and asserts a clean
exception naming the argument, or the correct result.
"""

import pytest
import torch

import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.testing import references as ref

T = torch.ops.torchsparse


def _map():
    coords = torch.tensor(
        [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.int32
    )
    keys, rows = torch.sort(T.pack_coords(coords))
    nbmap = T.kernel_map(keys, rows, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1], False)
    return coords, keys, rows, nbmap, *T.kernel_map_pairs(nbmap)


@pytest.mark.parametrize("op", ["conv3d", "conv3d_weight_grad"])
def test_sizes_with_a_negative_entry_that_sum_correctly(op):
    x, rows = torch.randn(5, 3), torch.tensor([0, 1, 2], dtype=torch.int32)
    sizes = torch.tensor([10_000_000, -9_999_997])  # sums to 3 pairs; used to SIGSEGV
    with pytest.raises(ValueError, match=r"sizes values must be in \[0, 3\]"):
        if op == "conv3d":
            T.conv3d(x, torch.randn(2, 3, 2), rows, rows, sizes, 5)
        else:
            T.conv3d_weight_grad(x, torch.randn(5, 2), rows, rows, sizes)


def test_non_contiguous_rows_are_read_as_their_values():
    # The range check used to read the view and the kernel the raw buffer: row 9999 of a 5-row input.
    x, w = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, 2, dtype=torch.float64)
    buffer = torch.tensor([0, 9999, 1, 9999, 2, 9999, 4, 9999], dtype=torch.int32)
    rows = buffer[::2]
    sizes = torch.tensor([3, 1])
    out = T.conv3d(x, w, rows, rows.flip(0), sizes[::1], 5)
    torch.testing.assert_close(out, ref.reference_conv3d(x, w, rows, rows.flip(0), sizes, 5))
    grad = T.conv3d_weight_grad(
        x, torch.ones(5, 2, dtype=torch.float64), rows, rows, torch.tensor([4, 0, 9])[:2]
    )
    torch.testing.assert_close(
        grad, ref.reference_conv3d_weight_grad(x, torch.ones(5, 2).double(), rows, rows, torch.tensor([4, 0]))
    )


def test_symmetric_kernel_map_rejects_rows_outside_the_map():
    coords, keys, rows, *_ = _map()
    bad = rows.clone()
    bad[2] = 100  # used to write nbmap row 100 of 5 (SIGSEGV)
    with pytest.raises(IndexError, match=r"sorted_rows values must be in \[0, 5\)"):
        T.kernel_map(keys, bad, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1], True)


def test_kernel_map_rejects_duplicate_keys():
    coords, keys, rows, *_ = _map()
    dup = keys.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="duplicates"):
        T.kernel_map(dup, rows, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1], False)


def test_lookups_in_a_full_table_terminate():
    full = torch.arange(16, dtype=torch.int64)  # no empty slot: probing used to loop forever
    assert T.hash_query(full, full, torch.tensor([100, -5])).tolist() == [-1, -1]
    idx, weights = T.point_voxel_query(torch.tensor([[0.0, 5.5, 5.5, 5.5]]), full, full, [1, 1, 1], 8)
    assert idx.tolist() == [[-1] * 8] and weights.abs().sum() == 0


def test_generative_geometry_is_bounded_before_any_arithmetic():
    coords = torch.zeros(1, 4, dtype=torch.int32)
    # dilation 2^63 - 5 used to overflow the range check and give batch -32768
    with pytest.raises(ValueError, match=r"dilation values must be in \[1, 65536\]"):
        T.generative_coords(coords, [3, 3, 3], [1, 1, 1], [2**63 - 5] * 3, [0, 0, 0])
    with pytest.raises(ValueError, match="packable range"):
        T.generative_coords(coords + 30000, [3, 3, 3], [2, 2, 2], [1, 1, 1], [0, 0, 0])


def test_layer_arguments_are_named_and_bounded():
    x = SparseTensor(
        torch.randn(3, 2), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 70, 0, 0]], dtype=torch.int32)
    )
    with pytest.raises(ValueError, match="dilation values must be <= 65536"):
        spnn.Conv3d(2, 2, 3, dilation=2**20)
    with pytest.raises(ValueError, match="padding values must be <= 65536"):
        spnn.Conv3d(2, 2, 3, stride=2, padding=100000)
    # stride 65 with kernel 3 used to fail with "kernel_size must be <= 64"
    y = spnn.Conv3d(2, 2, 3, stride=65)(x)
    assert y.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]


def test_meta_argument_is_an_error_not_uninitialised_memory():
    x, rows = torch.randn(5, 3), torch.tensor([0, 1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="out_rows on meta"):
        T.conv3d(x, torch.randn(1, 3, 2), rows, rows.to("meta"), torch.tensor([3]), 5)
    # All on meta is shape inference, and stays on meta.
    out = T.conv3d(
        x.to("meta"),
        torch.randn(1, 3, 2, device="meta"),
        rows.to("meta"),
        rows.to("meta"),
        torch.tensor([3]),
        5,
    )
    assert out.device.type == "meta" and out.shape == (5, 2)


def test_error_types_follow_the_readme():
    coords, keys, rows, nbmap, in_rows, out_rows, sizes = _map()
    x = torch.randn(5, 3)
    with pytest.raises(TypeError, match="in_rows must be int32, got int64"):
        T.conv3d(x, torch.randn(27, 3, 2), in_rows.long(), out_rows, sizes, 5)
    with pytest.raises(ValueError, match="sizes must be a CPU tensor"):
        T.conv3d(x, torch.randn(27, 3, 2), in_rows, out_rows, sizes.to("meta"), 5)
    with pytest.raises(IndexError, match=r"nbmap values must be in \[-1, 2\)"):
        T.conv3d_fused(x[:2], torch.randn(27, 3, 2), nbmap, in_rows, out_rows, sizes, 4)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        T.voxelize(x, torch.zeros(5, dtype=torch.int64), torch.tensor([-1]))
