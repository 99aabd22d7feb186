import functools
import itertools
import pathlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsparse import SparseTensor, ops
from torchsparse.conv_output import centred_base, conv_output
from torchsparse.tensor import to_triple
from torchsparse.testing import (
    brute_force_generative_coords,
    brute_force_kernel_map,
    brute_force_strided_coords,
    dense_conv,
    kernel_indices,
    quantize_scan,
    random_coords,
)

SCAN = pathlib.Path(__file__).resolve().parents[2] / "assets" / "semantickitti" / "000000.bin"
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

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
    _, _, sizes = ops.kernel_map_pairs(nbmap)
    assert int(sizes.sum()) == int((nbmap >= 0).sum())
    assert torch.equal(nbmap[:, 13], torch.arange(len(coords), dtype=torch.int32, device=device))
    sample = torch.randperm(len(coords))[:300]
    reference = brute_force_kernel_map(coords.cpu(), coords.cpu()[sample], (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    assert torch.equal(nbmap.cpu()[sample], reference)


def test_empty_inputs(device):
    empty = torch.empty(0, 4, dtype=torch.int32, device=device)
    nbmap = ops.kernel_map(_table(empty), empty, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1))
    assert nbmap.shape == (0, 27)
    in_rows, _, sizes = ops.kernel_map_pairs(nbmap)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sites=st.lists(_site, max_size=40, unique=True), kernel=_triple, stride=_triple, dilation=_triple,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)))
def test_fuzz_against_brute_force(sites, kernel, stride, dilation, padding, device):
    coords = torch.tensor(sites, dtype=torch.int32).reshape(-1, 4)
    base = tuple(-p for p in padding)
    out, generated = ops.strided_coords(coords.to(device), kernel, stride, dilation, base)
    assert torch.equal(out.cpu(), brute_force_strided_coords(coords, kernel, stride, dilation, base))
    nbmap = ops.kernel_map(_table(coords.to(device)), out, kernel, stride, dilation, base)
    assert torch.equal(nbmap.cpu(), brute_force_kernel_map(coords, out.cpu(), kernel, stride, dilation, base))
    assert torch.equal(generated, nbmap)
    in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
    assert all(torch.equal(a.cpu(), b) for a, b in zip((in_rows, out_rows, sizes), _expected_pairs(nbmap.cpu())))
    up, back = ops.generative_coords(coords.to(device), kernel, stride, dilation, base)
    assert torch.equal(up.cpu(), brute_force_generative_coords(coords, kernel, stride, dilation, base))
    assert torch.equal(back.cpu(), brute_force_kernel_map(up.cpu(), coords, kernel, stride, dilation, base))
    odd = tuple(k | 1 for k in kernel)  # submanifold: the mirrored half of a symmetric map
    subm = ops.kernel_map(_table(coords.to(device)), coords.to(device), odd, (1, 1, 1), dilation,
                          centred_base(odd, dilation), symmetric=True)
    assert torch.equal(subm.cpu(), brute_force_kernel_map(coords, coords, odd, (1, 1, 1), dilation,
                                                          centred_base(odd, dilation)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 3000), extent=st.integers(4, 60), kernel=_triple,
       stride=_triple, dilation=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
       shuffle=st.booleans())
def test_random_clouds_of_many_chunks(seed, n, extent, kernel, stride, dilation, shuffle, device):
    # Clouds of thousands of sites (many merge and compaction cells), outputs sorted or not.
    coords = random_coords(n, (extent, extent, 12), batch_size=2, low=(-extent // 2, -3, -6), seed=seed % 1000)
    if shuffle:
        coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(seed))]
    coords = coords.to(device)
    base = centred_base(kernel, dilation)
    out, generated = ops.strided_coords(coords, kernel, stride, dilation, base)
    assert torch.equal(out.cpu(), brute_force_strided_coords(coords.cpu(), kernel, stride, dilation, base))
    assert torch.equal(generated, _hash_map(coords, out, kernel, stride, dilation, base))
    for targets in (out, out.flip(0)):
        nbmap = ops.kernel_map(_table(coords), targets, kernel, stride, dilation, base)
        assert torch.equal(nbmap, _hash_map(coords, targets, kernel, stride, dilation, base))
        in_rows, out_rows, sizes = ops.kernel_map_pairs(nbmap)
        assert all(torch.equal(a.cpu(), b) for a, b in zip((in_rows, out_rows, sizes), _expected_pairs(nbmap.cpu())))
    odd = tuple(k | 1 for k in kernel)
    full = ops.kernel_map(_table(coords), coords, odd, (1, 1, 1), dilation, centred_base(odd, dilation))
    assert torch.equal(full, _hash_map(coords, coords, odd, (1, 1, 1), dilation, centred_base(odd, dilation)))
    mirrored = ops.kernel_map(_table(coords), coords, odd, (1, 1, 1), dilation, centred_base(odd, dilation), True)
    assert torch.equal(mirrored, full)
    up, back = ops.generative_coords(coords, kernel, stride, dilation, base)
    assert torch.equal(up.cpu(), brute_force_generative_coords(coords.cpu(), kernel, stride, dilation, base))
    assert torch.equal(back, ops.kernel_map(_table(up), coords, kernel, stride, dilation, base))


# Every convolution semantics, as conv_output builds its map: name -> (kernel, stride, dilation, padding, mode,
# transposed, generative). Transposed and generative maps start from the stride-`stride` level of the scan.
SEMANTICS = {
    "submanifold k3": (3, 1, 1, 0, "minkowski", False, False),
    "submanifold k3 d2": (3, 1, 2, 0, "minkowski", False, False),
    "submanifold k(3,1,5) d(1,1,2)": ((3, 1, 5), 1, (1, 1, 2), 0, "minkowski", False, False),
    "submanifold k2": (2, 1, 1, 0, "minkowski", False, False),
    "minkowski k2 s2": (2, 2, 1, 0, "minkowski", False, False),
    "minkowski k3 s2": (3, 2, 1, 0, "minkowski", False, False),
    "spconv k3 s2 p1": (3, 2, 1, 1, "spconv", False, False),
    "spconv k(1,1,3) s(1,1,2)": ((1, 1, 3), (1, 1, 2), 1, 0, "spconv", False, False),
    "transposed minkowski k2 s2": (2, 2, 1, 0, "minkowski", True, False),
    "transposed spconv k3 s2 p1": (3, 2, 1, 1, "spconv", True, False),
    "generative k2 s2": (2, 2, 1, 0, "minkowski", False, True),
    "generative k3 s2 d2": (3, 2, 2, 0, "minkowski", False, True),
}


@functools.cache
def _scan(voxel_size: float) -> torch.Tensor:
    """int32 (N, 4) sorted unique voxels of the SemanticKITTI scan (batch 0, min x, y, z = 0)."""
    return quantize_scan(np.fromfile(SCAN, dtype=np.float32).reshape(-1, 4), voxel_size).coords


def _conv_output(coords, name):
    """(input coords, ConvOutput) of semantics `name` applied to coords (a fresh cache per call)."""
    kernel, stride, dilation, padding, mode, transposed, generative = SEMANTICS[name]
    ks, st, dl, pd = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d"), to_triple(padding, "p", 0)
    spatial = (1, *(int(v) + 2 for v in coords[:, 1:].max(0).values))
    x = SparseTensor(torch.empty(len(coords), 0, device=coords.device), coords, spatial_range=spatial)
    if transposed or generative:
        down = conv_output(x, ks, st, dl, pd, False, False, mode)
        x = SparseTensor._derived(torch.empty(len(down.coords), 0, device=coords.device), down.coords, down.stride,
                                  down.spatial_range, x.cache)
    return x.coords, conv_output(x, ks, st, dl, pd, transposed, generative, mode)


def _inverse(forward: torch.Tensor, rows: int) -> torch.Tensor:
    """The map of the transposed conv: entry (n, k) = o where forward[o, k] = n, -1 elsewhere."""
    out, k = torch.nonzero(forward >= 0, as_tuple=True)
    inverse = torch.full((rows, forward.shape[1]), -1, dtype=torch.int32)
    inverse[forward[out, k].long(), k] = out.int()
    return inverse


@functools.cache
def _expected(name: str, voxel_size: float):
    """Brute-force coords int32 (M, 4) and nbmap int32 (M, K) of semantics `name` on the scan (CPU)."""
    kernel, stride, dilation, padding, mode, transposed, generative = SEMANTICS[name]
    ks, st, dl, pd = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d"), to_triple(padding, "p", 0)
    fine = _scan(voxel_size)
    size = [int(v) + 2 for v in fine[:, 1:].max(0).values]
    unit = st == (1, 1, 1)
    base = centred_base(ks, dl) if mode == "minkowski" or unit else tuple(-p for p in pd)
    if unit:
        return fine, brute_force_kernel_map(fine, fine, ks, st, dl, base)
    upper = None
    if mode == "spconv":
        upper = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, pd, dl, ks, st))
        coarse = brute_force_strided_coords(fine, ks, st, dl, base, upper)
    else:
        coarse = brute_force_strided_coords(fine, st, st, (1, 1, 1), (0, 0, 0))  # unique(floor(c / s))
    if generative:
        new = brute_force_generative_coords(coarse, ks, st, dl, base)
        return new, _inverse(brute_force_kernel_map(new, coarse, ks, st, dl, base), len(new))
    forward = brute_force_kernel_map(fine, coarse, ks, st, dl, base)
    return (fine, _inverse(forward, len(fine))) if transposed else (coarse, forward)


def _expected_pairs(nbmap: torch.Tensor):
    """in_rows, out_rows grouped by offset, ascending output row within an offset, and sizes, from nbmap alone."""
    present = nbmap.t() >= 0
    k, out = torch.nonzero(present, as_tuple=True)
    return nbmap[out, k], out.int(), present.sum(1)


@pytest.mark.parametrize("name", list(SEMANTICS))
def test_every_semantics_on_real_scan_matches_brute_force(name, device):
    # A real LiDAR scan at 40 cm (21k voxels: many merge chunks, a partial last one) against the Python references:
    # output sites, the nbmap (searched, symmetric-mirrored, generated or transposed) and the pair lists.
    in_coords, out = _conv_output(_scan(0.4).to(device), name)
    coords, nbmap = _expected(name, 0.4)
    assert torch.equal(out.coords.cpu(), coords)
    assert torch.equal(out.kmap.nbmap.cpu(), nbmap)
    transposed = SEMANTICS[name][5] or SEMANTICS[name][6]
    # A transposed map lists the pairs of its forward map (stationary over in_coords) swapped.
    forward = _inverse(nbmap, len(in_coords)) if transposed else nbmap
    in_rows, out_rows, sizes = _expected_pairs(forward)
    if transposed:
        in_rows, out_rows = out_rows, in_rows
    assert out.kmap.sizes.device.type == "cpu" and torch.equal(out.kmap.sizes, sizes)
    assert torch.equal(out.kmap.in_rows.cpu(), in_rows) and torch.equal(out.kmap.out_rows.cpu(), out_rows)


@pytest.mark.parametrize("name", ["submanifold k3", "minkowski k2 s2", "minkowski k3 s2", "spconv k3 s2 p1",
                                  "generative k2 s2"])
def test_full_resolution_scan_matches_hash_queries(name, device):
    # The 5 cm scan (94k voxels): every searched map equals one built from hash-table queries, and the maps
    # generated with the sites equal the searched ones.
    fine = _scan(0.05).to(device)
    in_coords, out = _conv_output(fine, name)
    kernel, stride, dilation, padding, mode, _, generative = SEMANTICS[name]
    ks, st, dl = to_triple(kernel, "k"), to_triple(stride, "s"), to_triple(dilation, "d")
    base = tuple(-padding for _ in range(3)) if mode == "spconv" else centred_base(ks, dl)
    if generative:  # stationary over the coarse inputs: the strided map from the new sites back to them
        forward = ops.kernel_map(_table(out.coords), in_coords, ks, st, dl, base)
        assert torch.equal(forward, _hash_map(out.coords, in_coords, ks, st, dl, base))
        assert torch.equal(out.kmap.nbmap.cpu(), _inverse(forward.cpu(), len(out.coords)))
        return
    assert torch.equal(out.kmap.nbmap, _hash_map(in_coords, out.coords, ks, st, dl, base))
    assert torch.equal(out.kmap.nbmap, ops.kernel_map(_table(in_coords), out.coords, ks, st, dl, base))
    in_rows, out_rows, sizes = _expected_pairs(out.kmap.nbmap.cpu())
    assert torch.equal(out.kmap.in_rows.cpu(), in_rows) and torch.equal(out.kmap.out_rows.cpu(), out_rows)
    assert torch.equal(out.kmap.sizes, sizes)


def test_results_do_not_depend_on_thread_count():
    coords = _scan(0.05)
    index = _table(coords)

    def build():
        nbmap = ops.kernel_map(index, coords, (3, 3, 3), (1, 1, 1), (1, 1, 1), (-1, -1, -1), symmetric=True)
        return (nbmap, *ops.kernel_map_pairs(nbmap), *ops.strided_coords(coords, (3, 3, 3), (2, 2, 2), (1, 1, 1),
                                                                          (-1, -1, -1)),
                *ops.generative_coords(coords[:5000], (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0)))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = build()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, build()))


@pytest.mark.parametrize("batch", [-1, 32768, 2**31 - 1])
def test_batch_out_of_packable_range_is_an_error(batch, device):
    coords = torch.tensor([[0, 1, 2, 3], [batch, 0, 0, 0]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="batch"):
        ops.strided_coords(coords, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="batch"):
        ops.generative_coords(coords, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0))


@pytest.mark.parametrize("name", list(SEMANTICS))
@pytest.mark.parametrize("voxel_size", [0.05, 0.4])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cuda_equals_cpu_on_real_scan(name, voxel_size, device):
    _, cpu = _conv_output(_scan(voxel_size), name)
    _, gpu = _conv_output(_scan(voxel_size).to(device), name)
    assert torch.equal(gpu.coords.cpu(), cpu.coords)
    for field in ("nbmap", "in_rows", "out_rows", "sizes"):
        assert torch.equal(getattr(gpu.kmap, field).cpu(), getattr(cpu.kmap, field)), field
    assert gpu.kmap.sizes.device.type == "cpu"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 3000), kernel=_triple, stride=_triple,
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), symmetric=st.booleans())
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cuda_equals_cpu_on_random_clouds(seed, n, kernel, stride, padding, symmetric, device):
    coords = random_coords(n, (30, 30, 12), batch_size=3, low=(-15, -3, -6), seed=seed % 1000)
    coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(seed))]
    base = tuple(-p for p in padding)
    odd = tuple(k | 1 for k in kernel)

    def build(c):
        out, generated = ops.strided_coords(c, kernel, stride, (1, 1, 1), base, (9, 9, 9) if seed % 2 else None)
        nbmap = ops.kernel_map(_table(c), out.flip(0), kernel, stride, (1, 1, 1), base)
        subm = ops.kernel_map(_table(c), c, odd, (1, 1, 1), (1, 1, 1), centred_base(odd, (1, 1, 1)), symmetric)
        return (out, generated, nbmap, *ops.kernel_map_pairs(nbmap), subm, *ops.kernel_map_pairs(subm),
                *ops.generative_coords(c, kernel, stride, (1, 1, 1), base))

    for cpu, gpu in zip(build(coords), build(coords.to(device))):
        assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("kernel_size", [(1, 1, 1), (3, 3, 3), (2, 2, 2), (1, 1, 3), (3, 1, 3), (2, 3, 2), (5, 4, 1)])
def test_kernel_offset_order_is_torchsparses(kernel_size):
    # The order is defined once, in C++ (every op numbers offsets by it); here it is written out as TorchSparse
    # documents it: x fastest for odd kernel volumes, z fastest for even ones.
    kx, ky, kz = kernel_size
    if kx * ky * kz % 2:
        expected = [(x, y, z) for z in range(kz) for y in range(ky) for x in range(kx)]
    else:
        expected = [(x, y, z) for x in range(kx) for y in range(ky) for z in range(kz)]
    assert ops.kernel_indices(kernel_size) == expected


def test_kernel_indices_errors():
    for bad in [(0, 1, 1), (1, 1, 65537), (-3, 3, 3)]:
        with pytest.raises(ValueError, match="kernel_size values must be in"):
            ops.kernel_indices(bad)
    with pytest.raises(ValueError, match="kernel_size must be 3 ints"):
        ops.kernel_indices((3, 3))
