"""State that layers keep between forward passes: the BEV pooling plan cache.

`BEVPoolCache` is the one cache of the camera-to-BEV step: `torchsparse.nn.BEVPool` keeps the engine's
`BEVPoolPlan` in it, and BEVFusion's view transform keeps its frustum plan (which includes that `BEVPoolPlan`).
The ops layer stays stateless: `torchsparse.ops.bev_pool_plan` computes, this module remembers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torchsparse.ops.bev_pool import BEVPoolPlan, bev_pool_plan

__all__ = ["BEVPoolCache"]


def _same_key(a: tuple, b: tuple) -> bool:
    """Tensors equal in shape, dtype, device and values (`torch.equal`); other entries equal by ==."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return False
        if isinstance(x, Tensor):
            if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


class BEVPoolCache:
    """Reuses what was computed from the camera geometry while that geometry is unchanged.

    It holds one entry: the last value and the key it was computed for. A key is a tuple of tensors (the
    matrices the geometry is computed from: camera intrinsics, camera-to-lidar, image and lidar augmentation,
    ...) and plain values; a call whose key equals the stored one (tensors: same shapes, dtypes, devices and
    values; others: ==) returns the stored value (a hit), anything else computes and stores a new one (a miss).
    The key is cloned, so changing the caller's tensors in place later is noticed. One entry is enough: within
    a run the calibration either stays fixed (one rig, no augmentation: every call hits) or changes every frame
    (training augmentation: every call misses and costs only the comparison of a few small matrices). A cached
    plan is the very plan a recomputation would return, so pooling with it is bitwise identical.

    Attributes:
        hits: calls answered from the cache.
        misses: calls that computed their value.
    """

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self._key: tuple | None = None
        self._value: Any = None

    def clear(self) -> None:
        """Forgets the stored value (the counters stay)."""
        self._key = self._value = None

    def _stored(self, key: tuple) -> Any:
        return self._value if self._key is not None and _same_key(self._key, key) else None

    def _store(self, key: tuple, value: Any) -> Any:
        self._key = tuple(k.detach().clone() if isinstance(k, Tensor) else k for k in key)
        self._value = value
        self.misses += 1
        return value

    def lookup(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """The stored value when `key` equals the stored key; otherwise ``compute()``, stored under `key`.

        Args:
            key: tensors and plain values the value is a function of.
            compute: called on a miss only.
        """
        stored = self._stored(key)
        if stored is not None:
            self.hits += 1
            return stored
        return self._store(key, compute())

    def plan(
        self,
        coords: Tensor | Callable[[], Tensor],
        batch_size: int,
        grid: Sequence[int],
        key: Sequence[Tensor],
    ) -> BEVPoolPlan:
        """The bev_pool plan of `coords` (`torchsparse.ops.bev_pool_plan`), from the cache when `key`,
        batch_size, grid and the number of points are unchanged.

        Args:
            coords: int32/int64 (N, 4) cell coordinates (x, y, z, b), or a function returning them; a function is
                called on a miss only, so the geometry itself is skipped on a hit (and its number of points is
                not compared).
            batch_size: B.
            grid: (Z, X, Y).
            key: the tensors `coords` is a function of; an empty key means the geometry never changes.

        Returns:
            BEVPoolPlan, the stored object itself on a hit.
        """
        if isinstance(key, Tensor) or not all(isinstance(k, Tensor) for k in key):
            raise TypeError(f"key must be a sequence of tensors, got {type(key).__name__}")
        if len(grid) != 3:
            raise ValueError(f"grid must be (Z, X, Y), got {tuple(grid)}")
        full_key = (*key, int(batch_size), tuple(int(g) for g in grid))
        num_points = coords.shape[0] if isinstance(coords, Tensor) else None
        stored = self._stored(full_key)
        if stored is not None and num_points in (None, stored[0]):
            self.hits += 1
            return stored[1]
        if not isinstance(coords, Tensor):
            coords = coords()
        return self._store(full_key, (coords.shape[0], bev_pool_plan(coords, batch_size, grid)))[1]
