"""Exact int64 packing of voxel coordinates and a hash table over the packed keys (csrc/hashing/).

Key layout (csrc/common/coords.h): batch in [0, BATCH_MAX], x, y, z in [COORD_MIN, COORD_MAX]; every key is >= 0.
The bounds and the table size are defined once, in C++, and read here from the extension module.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from torchsparse import _C
from torchsparse.ops.checks import check_same_device

BATCH_MAX: int = _C.BATCH_MAX  # 32767
COORD_MIN: int = _C.COORD_MIN  # -32768
COORD_MAX: int = _C.COORD_MAX  # 32767
# Largest kernel extent, stride, dilation or padding per axis (2^16): one axis of packed coordinates spans 2^16
# values, so a larger one cannot connect two sites.
MAX_GEOMETRY: int = _C.MAX_GEOMETRY


class HashTable(NamedTuple):
    """Open-addressing table over packed keys, as two tensors so that it can be cached and passed to ops.

    Attributes:
        keys: int64 (capacity,) stored keys, -1 in empty slots.
        values: int64 (capacity,) row of each stored key (the smallest row for repeated keys).
    """

    keys: Tensor
    values: Tensor


def pack_coords(coords: Tensor) -> Tensor:
    """Packs coordinates into keys.

    Args:
        coords: int32 (N, 4) as (batch, x, y, z) inside the packable range.

    Returns:
        int64 (N,) keys, >= 0; equal keys iff equal coordinates.
    """
    return torch.ops.torchsparse.pack_coords(coords)


def unpack_coords(keys: Tensor) -> Tensor:
    """Inverse of `pack_coords`: int64 (N,) keys -> int32 (N, 4) coordinates."""
    return torch.ops.torchsparse.unpack_coords(keys)


def hash_capacity(num_keys):
    """Slots of the table `hash_build` makes for `num_keys` keys (2 * num_keys + 16: load factor <= 1/2)."""
    return _C.HASH_CAPACITY_SCALE * num_keys + _C.HASH_CAPACITY_PAD


def hash_build(keys: Tensor) -> tuple[HashTable, Tensor]:
    """Builds a hash table mapping each key to its row.

    Args:
        keys: int64 (N,) keys, each >= 0; may repeat.

    Returns:
        The table (`hash_capacity(N)` = 2N + 16 slots, so it never fills) and an int64 0-dim tensor with the number of distinct
        keys.
    """
    table_keys, table_values, num_unique = torch.ops.torchsparse.hash_build(keys)
    return HashTable(table_keys, table_values), num_unique


def hash_query(table: HashTable, queries: Tensor) -> Tensor:
    """Looks keys up.

    Args:
        table: built by `hash_build`.
        queries: int64 (M,) keys; negative queries are never found.

    Returns:
        int64 (M,) row of each query, -1 where absent.
    """
    return torch.ops.torchsparse.hash_query(table.keys, table.values, queries)


@torch.library.register_fake("torchsparse::pack_coords")
def _(coords):
    torch._check_value(coords.dim() == 2 and coords.shape[1] == 4, lambda: "coords must be (N, 4)")
    torch._check_type(coords.dtype == torch.int32, lambda: "coords must be int32")
    return coords.new_empty(coords.shape[0], dtype=torch.int64)


@torch.library.register_fake("torchsparse::unpack_coords")
def _(keys):
    torch._check_value(keys.dim() == 1 and keys.dtype == torch.int64, lambda: "keys must be int64 (N,)")
    return keys.new_empty((keys.shape[0], 4), dtype=torch.int32)


@torch.library.register_fake("torchsparse::hash_build")
def _(keys):
    torch._check_value(keys.dim() == 1 and keys.dtype == torch.int64, lambda: "keys must be int64 (N,)")
    capacity = hash_capacity(keys.shape[0])
    return keys.new_empty(capacity), keys.new_empty(capacity), keys.new_empty(())


@torch.library.register_fake("torchsparse::hash_query")
def _(table_keys, table_values, queries):
    check_same_device(table_keys=table_keys, table_values=table_values, queries=queries)
    torch._check_value(queries.dim() == 1 and queries.dtype == torch.int64, lambda: "queries must be int64 (M,)")
    return queries.new_empty(queries.shape[0])
