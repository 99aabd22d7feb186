import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchsparse import ops
from torchsparse.kernel_map import centred_base
from torchsparse.testing import (
    brute_force_generative_coords,
    brute_force_kernel_map,
    brute_force_strided_coords,
    dense_conv,
    kernel_indices,
    random_coords,
)
from torchsparse.tensor import to_triple

KERNELS = [1, 2, 3, 5, (1, 1, 3), (3, 1, 3)]
STRIDES = [1, 2, 3, (1, 1, 2)]
DILATIONS = [1, 2]


def _coords(batch_size, device, seed=0):
    return random_coords(60, (7, 6, 8), batch_size=batch_size, low=(-4, -2, -5), seed=seed).to(device)


def _table(coords):
    return ops.sorted_index(coords)[0]


def _hash_map(coords, out_coords, kernel_size, stride, dilation, base):
    """The same map from hash-table queries: one query per (output, offset), vectorised."""
    table, _ = ops.hash_build(ops.pack_coords(coords))
    nbmap = []
    for ix, iy, iz in kernel_indices(kernel_size):
        shift = [b + i * d for b, i, d in zip(base, (ix, iy, iz), dilation)]
        target = out_coords.long() * torch.tensor([1, *stride], device=out_coords.device)
        target[:, 1:] += torch.tensor(shift, device=out_coords.device)
        valid = (target[:, 1:] >= -32768).all(1) & (target[:, 1:] <= 32767).all(1)
        rows = torch.full((len(target),), -1, dtype=torch.int64, device=coords.device)
        rows[valid] = ops.hash_query(table, ops.pack_coords(target[valid].int()))
        nbmap.append(rows)
    return torch.stack(nbmap, 1).int()


@pytest.mark.parametrize("kernel,stride,dilation", list(itertools.product(KERNELS, STRIDES, DILATIONS)))
@pytest.mark.parametrize("mode", ["minkowski", "spconv"])
def test_kernel_map_matches_brute_force(kernel, stride, dilation, mode, device):
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    base = centred_base(ks, dl) if mode == "minkowski" else tuple(-(k // 2) for k in ks)
    coords = _coords(3, device, seed=sum(ks) + sum(st))
    out, generated = ops.strided_coords(coords, ks, st, dl, base)
    expected_out = brute_force_strided_coords(coords.cpu(), ks, st, dl, base)
    assert torch.equal(out.cpu(), expected_out)
    nbmap = ops.kernel_map(_table(coords), out, ks, st, dl, base)
    assert torch.equal(nbmap.cpu(), brute_force_kernel_map(coords.cpu(), out.cpu(), ks, st, dl, base))
    assert torch.equal(generated, nbmap)  # the map found while generating the sites equals the searched one
    assert torch.equal(nbmap, _hash_map(coords, out, ks, st, dl, base))
    # Every output of the strided set has at least one neighbour by construction.
    assert bool((nbmap >= 0).any(1).all())


@pytest.mark.parametrize("kernel,stride", [(3, 2), (3, 1), ((1, 1, 3), (1, 1, 2)), (2, 2), (5, 3)])
@pytest.mark.parametrize("padding", [0, 1])
def test_spconv_output_set_is_dense_nonempty_set(kernel, stride, padding, device):
    ks, st = to_triple(kernel, "k"), to_triple(stride, "s")
    base = (-padding,) * 3
    coords = random_coords(40, (9, 9, 9), batch_size=2, seed=3).to(device)
    size = (9, 9, 9)
    upper = tuple((n + 2 * padding - (k - 1) - 1) // s + 1 for n, k, s in zip(size, ks, st))
    out, _ = ops.strided_coords(coords, ks, st, (1, 1, 1), base, upper)
    # The dense oracle: an all-ones conv over the padded grid is non-zero exactly at the output sites.
    grid = torch.zeros(2, 1, *(n + 2 * padding for n in size), dtype=torch.float64)
    for b, x, y, z in coords.tolist():
        grid[b, 0, x + padding, y + padding, z + padding] = 1
    dense = torch.nn.functional.conv3d(grid, torch.ones(1, 1, *ks, dtype=torch.float64), stride=st)
    nonempty = torch.nonzero(dense[:, 0] > 0).to(torch.int32)
    assert torch.equal(out.cpu(), nonempty)


@pytest.mark.parametrize("stride", [2, 3, (1, 1, 2)])
def test_minkowski_output_set_is_floor_division(stride, device):
    st = to_triple(stride, "s")
    coords = _coords(2, device)
    out, _ = ops.strided_coords(coords, st, st, (1, 1, 1), (0, 0, 0))
    floor = coords.cpu().clone()
    floor[:, 1:] = torch.div(floor[:, 1:], torch.tensor(st, dtype=torch.int32), rounding_mode="floor")
    assert torch.equal(out.cpu(), torch.unique(floor, dim=0))
    # ... which is the non-empty set of a dense window sum with kernel = stride.
    ones = torch.ones(len(coords), 1, dtype=torch.float64)
    dense = dense_conv(coords.cpu(), ones, torch.ones(st[0] * st[1] * st[2], 1, 1, dtype=torch.float64),
                       out.cpu(), st, st, (1, 1, 1), (0, 0, 0))
    assert bool((dense > 0).all())


@pytest.mark.parametrize("kernel,stride,dilation", [(2, 2, 1), (3, 1, 1), (3, 2, 2), ((1, 1, 3), (1, 1, 2), 1)])
def test_generative_coords_match_brute_force(kernel, stride, dilation, device):
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    coords = _coords(2, device)
    base = centred_base(ks, dl)
    out, nbmap = ops.generative_coords(coords, ks, st, dl, base)
    assert torch.equal(out.cpu(), brute_force_generative_coords(coords.cpu(), ks, st, dl, base))
    # nbmap[n, k] is the new site reached from input n at offset k: the strided map from the new sites back.
    assert torch.equal(nbmap.cpu(), brute_force_kernel_map(out.cpu(), coords.cpu(), ks, st, dl, base))


def test_generative_coords_overflow_is_an_error(device):
    coords = torch.tensor([[0, 30000, 0, 0]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="packable range"):
        ops.generative_coords(coords, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (5, 1), ((1, 1, 3), 1), ((3, 1, 5), 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_symmetric_submanifold_map(kernel, dilation, shuffle, device):
    ks, dl = to_triple(kernel, "k"), to_triple(dilation, "d")
    coords = _coords(3, device)
    if shuffle:
        coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(1)).to(device)]
    base = centred_base(ks, dl)
    index = _table(coords)
    full = ops.kernel_map(index, coords, ks, (1, 1, 1), dl, base)
    assert torch.equal(ops.kernel_map(index, coords, ks, (1, 1, 1), dl, base, symmetric=True), full)
    assert torch.equal(full.cpu(), brute_force_kernel_map(coords.cpu(), coords.cpu(), ks, (1, 1, 1), dl, base))


def test_symmetric_requires_submanifold_geometry(device):
    coords = _coords(1, device)
    with pytest.raises(ValueError, match="centred odd kernel"):
        ops.kernel_map(_table(coords), coords, (2, 2, 2), (1, 1, 1), (1, 1, 1), (0, 0, 0), symmetric=True)
    with pytest.raises(ValueError, match="indexed sites"):
        ops.kernel_map(_table(coords), coords[:3], (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1), symmetric=True)


def test_unsorted_inputs_and_outputs(device):
    coords = _coords(3, device)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(0)).to(device)
    shuffled = coords[perm]
    nbmap = ops.kernel_map(_table(shuffled), shuffled.flip(0), (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    reference = brute_force_kernel_map(shuffled.cpu(), shuffled.flip(0).cpu(), (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    assert torch.equal(nbmap.cpu(), reference)


def test_merge_equals_hash_on_real_scan(device):
    # The merge map and a hash-table map agree exactly on a real LiDAR scan (5 cm voxels).
    import pathlib

    import numpy as np

    from torchsparse.utils import sparse_quantize

    scan = pathlib.Path(__file__).resolve().parents[2] / "assets" / "semantickitti" / "000000.bin"
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
    voxels = torch.from_numpy(sparse_quantize(points[:, :3], 0.05))
    coords = torch.cat([torch.zeros(len(voxels), 1, dtype=torch.int32), voxels], 1).to(device)
    for stride, kernel, base in (((1, 1, 1), (3, 3, 3), (-1, -1, -1)), ((2, 2, 2), (2, 2, 2), (0, 0, 0))):
        out, _ = ops.strided_coords(coords, stride, stride, (1, 1, 1), (0, 0, 0))
        nbmap = ops.kernel_map(_table(coords), out, kernel, stride, (1, 1, 1), base)
        assert torch.equal(nbmap, _hash_map(coords, out, kernel, stride, (1, 1, 1), base))


def test_queries_outside_packable_range_are_absent(device):
    # A query beyond the key layout must not alias a stored site.
    coords = torch.tensor([[0, 32767, 0, 0], [0, -32768, 0, 0]], dtype=torch.int32, device=device)
    nbmap = ops.kernel_map(_table(coords), coords, (3, 1, 1), (1, 1, 1), (1, 1, 1), (-1, 0, 0))
    assert nbmap.tolist() == [[-1, 0, -1], [-1, 1, -1]]


def test_pairs_grouped_by_offset(device):
    coords = _coords(2, device)
    nbmap = ops.kernel_map(_table(coords), coords, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
    assert sizes.device.type == "cpu" and sizes.tolist() == (nbmap >= 0).sum(0).tolist()
    start = 0
    for k, n in enumerate(sizes.tolist()):
        o = out_rows[start:start + n].long()
        expected_out = torch.nonzero(nbmap[:, k] >= 0)[:, 0]
        assert torch.equal(o, expected_out)
        assert torch.equal(in_rows[start:start + n].long(), nbmap[expected_out, k].long())
        start += n
    # Submanifold maps of odd kernels are symmetric: offset k and K - 1 - k hold the same pairs swapped.
    assert sizes.tolist() == sizes.flip(0).tolist()


def test_large_kernel_map_chunks(device):
    # More rows than one parallel chunk, with negative coordinates spanning thousands of voxels.
    coords = random_coords(20000, (4000, 30, 30), batch_size=2, low=(-2000, -15, -15), seed=9).to(device)
    nbmap = ops.kernel_map(_table(coords), coords, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
    assert int(sizes.sum()) == int((nbmap >= 0).sum())
    assert torch.equal(nbmap[:, 13], torch.arange(len(coords), dtype=torch.int32, device=device))
    sample = torch.randperm(len(coords))[:300]
    reference = brute_force_kernel_map(coords.cpu(), coords.cpu()[sample], (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    assert torch.equal(nbmap.cpu()[sample], reference)


def test_empty_inputs(device):
    empty = torch.empty(0, 4, dtype=torch.int32, device=device)
    nbmap = ops.kernel_map(_table(empty), empty, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    assert nbmap.shape == (0, 27)
    in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
    assert in_rows.numel() == 0 and sizes.tolist() == [0] * 27
    out, nbmap = ops.strided_coords(empty, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0))
    assert out.shape == (0, 4) and nbmap.shape == (0, 8)


def test_bad_geometry(device):
    coords = _coords(1, device)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.kernel_map(_table(coords), coords, (0, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="stride"):
        ops.strided_coords(coords, (3, 3, 3), (1, -1, 1), (1, 1, 1), (0, 0, 0))


def test_opcheck(device):
    coords = _coords(2, device)
    table = _table(coords)
    nbmap = ops.kernel_map(table, coords, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    T = torch.ops.torchsparse
    torch.library.opcheck(T.kernel_map, (table.keys, table.rows, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1]))
    torch.library.opcheck(T.kernel_map, (table.keys, table.rows, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1], True))
    torch.library.opcheck(T.kernel_map_pairs, (nbmap,))
    torch.library.opcheck(T.strided_coords, (coords, [3, 3, 3], [2, 2, 2], [1, 1, 1], [-1, -1, -1], [4, 4, 4]))
    torch.library.opcheck(T.generative_coords, (coords, [2, 2, 2], [2, 2, 2], [1, 1, 1], [0, 0, 0]))


_site = st.tuples(st.integers(0, 2), st.integers(-6, 6), st.integers(-6, 6), st.integers(-6, 6))
_triple = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(sites=st.lists(_site, max_size=40, unique=True), kernel=_triple, stride=_triple, dilation=_triple,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)))
def test_fuzz_against_brute_force(sites, kernel, stride, dilation, padding):
    coords = torch.tensor(sites, dtype=torch.int32).reshape(-1, 4)
    base = tuple(-p for p in padding)
    out, generated = ops.strided_coords(coords, kernel, stride, dilation, base)
    assert torch.equal(out, brute_force_strided_coords(coords, kernel, stride, dilation, base))
    nbmap = ops.kernel_map(_table(coords), out, kernel, stride, dilation, base)
    assert torch.equal(nbmap, brute_force_kernel_map(coords, out, kernel, stride, dilation, base))
    assert torch.equal(generated, nbmap)
    up, back = ops.generative_coords(coords, kernel, stride, dilation, base)
    assert torch.equal(up, brute_force_generative_coords(coords, kernel, stride, dilation, base))
    assert torch.equal(back, brute_force_kernel_map(up, coords, kernel, stride, dilation, base))
