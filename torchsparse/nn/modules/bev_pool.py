"""BEVFusion's camera-to-BEV pooling as a module that keeps its precomputed plan between frames."""

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from torchsparse.nn.cache import BEVPoolCache
from torchsparse.nn.functional.bev_pool import bev_pool

__all__ = ["BEVPool"]


class BEVPool(nn.Module):
    """Camera-frustum features -> dense BEV grid, reusing the sort while the geometry is unchanged.

    The module owns a `BEVPoolCache` (``self.cache``, with ``hits`` and ``misses``); it holds no parameters or
    buffers, so state dicts are unaffected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cache = BEVPoolCache()

    def forward(
        self,
        feats: Tensor,
        coords: Tensor | Callable[[], Tensor],
        batch_size: int,
        grid: Sequence[int],
        key: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Pools feats into the grid.

        Args:
            feats: float (N, C) point features.
            coords: int32/int64 (N, 4) cell coordinates (x, y, z, b), or a function returning them (called only
                on a cache miss).
            batch_size: B.
            grid: (Z, X, Y).
            key: tensors the coords are computed from (e.g. camera intrinsics, camera-to-lidar, image and lidar
                augmentation matrices); None computes the plan every call without touching the cache.

        Returns:
            (B, C, Z, X, Y) of feats' dtype.
        """
        return bev_pool(feats, coords, batch_size, grid, cache=self.cache, key=key)
