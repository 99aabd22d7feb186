"""Conversions of sparse tensors to dense grids."""

from torch import Tensor, nn

from torchsparse.nn import functional as F
from torchsparse.tensor import SparseTensor

__all__ = ["ToBEV", "ToDense"]


class ToDense(nn.Module):
    """SparseTensor with spatial_range (B, X, Y, Z) -> dense (B, C, X, Y, Z), zero-filled."""

    def forward(self, input: SparseTensor) -> Tensor:
        return input.dense()


class ToBEV(nn.Module):
    """Height compression: SparseTensor -> dense (B, C * Z, X, Y) (see `torchsparse.nn.functional.to_bev`)."""

    def __init__(self, axis: str = "z") -> None:
        super().__init__()
        self.axis = axis

    def forward(self, input: SparseTensor) -> Tensor:
        return F.to_bev(input, self.axis)
