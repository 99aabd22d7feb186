"""Sparse pooling modules; see torchsparse.nn.functional.pooling."""

from collections.abc import Sequence

from torch import Tensor, nn

from torchsparse.nn import functional as F
from torchsparse.tensor import SparseTensor

__all__ = ["AvgPool3d", "GlobalAvgPool", "GlobalMaxPool", "MaxPool3d"]


class _LocalPool(nn.Module):
    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        downsample_mode: str = "minkowski",
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.downsample_mode = dilation, downsample_mode

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


class MaxPool3d(_LocalPool):
    """Local max pooling over present sites; (N, C) -> (M, C)."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return F.max_pool3d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.downsample_mode)


class AvgPool3d(_LocalPool):
    """Local average pooling over present sites; (N, C) -> (M, C)."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return F.avg_pool3d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.downsample_mode)


class GlobalAvgPool(nn.Module):
    """Per-sample mean: SparseTensor (N, C) -> dense (B, C)."""

    def forward(self, input: SparseTensor) -> Tensor:
        return F.global_avg_pool(input)


class GlobalMaxPool(nn.Module):
    """Per-sample maximum: SparseTensor (N, C) -> dense (B, C)."""

    def forward(self, input: SparseTensor) -> Tensor:
        return F.global_max_pool(input)
