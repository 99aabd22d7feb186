import pytest
import torch

from torchsparse import ops
from torchsparse.ops.hashing import BATCH_MAX, COORD_MAX, COORD_MIN
from torchsparse.testing import random_coords


def test_pack_roundtrip_and_order(device):
    coords = torch.tensor(
        [[0, 0, 0, 0], [0, -1, 2, -3], [BATCH_MAX, COORD_MAX, COORD_MAX, COORD_MAX],
         [0, COORD_MIN, COORD_MIN, COORD_MIN], [3, 5, -7, 11]],
        dtype=torch.int32, device=device,
    )
    keys = ops.pack_coords(coords)
    assert bool((keys >= 0).all())
    assert torch.equal(ops.unpack_coords(keys), coords)
    # Key order is lexicographic (batch, x, y, z) order.
    order = sorted(range(len(coords)), key=lambda i: coords[i].tolist())
    assert torch.equal(torch.argsort(keys).cpu(), torch.tensor(order))


@pytest.mark.parametrize("bad", [[-1, 0, 0, 0], [BATCH_MAX + 1, 0, 0, 0], [0, COORD_MAX + 1, 0, 0], [0, 0, COORD_MIN - 1, 0]])
def test_pack_rejects_out_of_range(bad, device):
    with pytest.raises(ValueError, match="packable range"):
        ops.pack_coords(torch.tensor([bad], dtype=torch.int32, device=device))


def test_hash_matches_dict(device):
    coords = random_coords(3000, (40, 40, 40), batch_size=3, low=(-20, -20, -20)).to(device)
    keys = ops.pack_coords(coords)
    table, num_unique = ops.hash_build(keys)
    assert int(num_unique) == len(coords)
    assert torch.equal(ops.hash_query(table, keys).cpu(), torch.arange(len(coords)))
    probe = random_coords(3000, (44, 44, 44), batch_size=4, low=(-22, -22, -22), seed=5).to(device)
    expected = {tuple(c): i for i, c in enumerate(coords.tolist())}
    found = ops.hash_query(table, ops.pack_coords(probe)).tolist()
    assert found == [expected.get(tuple(c), -1) for c in probe.tolist()]


def test_hash_duplicates_keep_smallest_row(device):
    keys = torch.tensor([7, 3, 7, 7, 3, 9], device=device)
    table, num_unique = ops.hash_build(keys)
    assert int(num_unique) == 3
    assert ops.hash_query(table, torch.tensor([7, 3, 9, 4, -5], device=device)).tolist() == [0, 1, 5, -1, -1]


def test_hash_grows_with_input(device):
    # No fixed capacity: a large table builds and finds every key.
    keys = torch.randint(0, 1 << 62, (200_000,), device=device)
    keys = torch.unique(keys)
    table, num_unique = ops.hash_build(keys)
    assert int(num_unique) == len(keys)
    assert torch.equal(ops.hash_query(table, keys), torch.arange(len(keys), device=device))


def test_hash_empty(device):
    table, num_unique = ops.hash_build(torch.empty(0, dtype=torch.int64, device=device))
    assert int(num_unique) == 0
    assert ops.hash_query(table, torch.tensor([1, 2], device=device)).tolist() == [-1, -1]
    assert ops.unpack_coords(torch.empty(0, dtype=torch.int64, device=device)).shape == (0, 4)


def test_hash_rejects_bad_input(device):
    with pytest.raises(ValueError, match="keys must be >= 0"):
        ops.hash_build(torch.tensor([1, -2], device=device))
    with pytest.raises(TypeError, match="int64"):
        ops.hash_build(torch.tensor([1, 2], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="coords must be"):
        ops.pack_coords(torch.zeros(3, 3, dtype=torch.int32, device=device))


def test_opcheck(device):
    coords = random_coords(200, (6, 6, 6), batch_size=2, low=(-3, -3, -3)).to(device)
    keys = ops.pack_coords(coords)
    table, _ = ops.hash_build(keys)
    torch.library.opcheck(torch.ops.torchsparse.pack_coords, (coords,))
    torch.library.opcheck(torch.ops.torchsparse.unpack_coords, (keys,))
    torch.library.opcheck(torch.ops.torchsparse.hash_build, (keys,))
    torch.library.opcheck(torch.ops.torchsparse.hash_query, (table.keys, table.values, keys))


def test_constants_come_from_the_extension(device):
    # Defined once in C++ (csrc/common/coords.h, hash_table.h) and read by Python: the values TorchSparse's key
    # layout gives (15 bits of batch, 16 per axis) and a table of 2N + 16 slots.
    from torchsparse import _C

    engine = (_C.BATCH_MAX, _C.COORD_MIN, _C.COORD_MAX)
    assert (BATCH_MAX, COORD_MIN, COORD_MAX) == engine == (2**15 - 1, -(2**15), 2**15 - 1)
    assert _C.MAX_GEOMETRY == 2**16
    for n in (0, 1, 1000):
        keys = ops.pack_coords(random_coords(n, (30, 30, 30), seed=n).to(device))[:n]
        table, _ = ops.hash_build(keys)
        assert table.keys.shape == table.values.shape == (ops.hash_capacity(len(keys)),)
        assert ops.hash_capacity(len(keys)) == 2 * len(keys) + 16
