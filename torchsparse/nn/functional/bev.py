"""Height compression of a sparse tensor into a dense bird's-eye-view map."""

from torch import Tensor

from torchsparse.tensor import SparseTensor

__all__ = ["to_bev"]

_AXES = {"x": 2, "y": 3, "z": 4}


def to_bev(input: SparseTensor, axis: str = "z") -> Tensor:
    """Densifies and folds one spatial axis into the channels.

    Args:
        input: tensor with spatial_range (B, X, Y, Z) and features (N, C).
        axis: the axis folded into channels ("z" for a BEV map in the x-y plane).

    Returns:
        (B, C * D, A1, A2): D the extent of `axis`, A1, A2 the remaining axes in (x, y, z) order; channel
        c * D + h holds feature c at height h (the layout of BEVFusion's SparseEncoder).
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
    dense = input.dense().movedim(_AXES[axis], 2)
    b, c, d, a1, a2 = dense.shape
    return dense.reshape(b, c * d, a1, a2)
