"""BEV pooling of camera-frustum features (BEVFusion's camera-to-BEV step), optionally with a plan cache."""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torchsparse.nn.cache import BEVPoolCache
from torchsparse.ops.bev_pool import bev_pool_apply, bev_pool_plan

__all__ = ["bev_pool"]


def bev_pool(
    feats: Tensor,
    coords: Tensor | Callable[[], Tensor],
    batch_size: int,
    grid: Sequence[int],
    *,
    cache: BEVPoolCache | None = None,
    key: Sequence[Tensor] | None = None,
) -> Tensor:
    """Sums point features into a dense BEV grid.

    Args:
        feats: float (N, C) camera-frustum point features.
        coords: int32/int64 (N, 4) integer cell coordinates (x, y, z, b), or a function returning them (called
            only when a plan has to be computed); points outside the grid are dropped.
        batch_size: B.
        grid: (Z, X, Y).
        cache: where to keep the plan between calls; used only together with `key`.
        key: the tensors coords are computed from (calibration and augmentation matrices); the cached plan is
            reused while they are unchanged (see `torchsparse.nn.BEVPoolCache`).

    Returns:
        (B, C, Z, X, Y) of feats' dtype, zero where no point falls; identical with and without the cache.
        float16 / bfloat16 features are summed in float32 and rounded once.
    """
    if cache is not None and key is not None:
        plan = cache.plan(coords, batch_size, grid, key)
    else:
        plan = bev_pool_plan(coords if isinstance(coords, Tensor) else coords(), batch_size, grid)
    if feats.dtype in (torch.float16, torch.bfloat16):  # the kernel sums in its input's dtype: sum in float32
        return bev_pool_apply(feats.float(), plan).to(feats.dtype)
    return bev_pool_apply(feats, plan)
