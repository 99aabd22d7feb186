"""torch.nn-style sparse layers: `torchsparse.nn.Conv3d`, ..., and `torchsparse.nn.functional`."""

from torchsparse.nn import functional
from torchsparse.nn.cache import BEVPoolCache
from torchsparse.nn.fusion import FusedConv3d, FusedResidual, fuse
from torchsparse.nn.modules import (
    AvgPool3d,
    BatchNorm,
    BEVPool,
    Conv3d,
    Dropout,
    GlobalAvgPool,
    GlobalMaxPool,
    GroupNorm,
    LeakyReLU,
    MaxPool3d,
    ReLU,
    SiLU,
    ToBEV,
    ToDense,
)

__all__ = [
    "AvgPool3d", "BEVPool", "BEVPoolCache", "BatchNorm", "Conv3d", "Dropout", "FusedConv3d", "FusedResidual",
    "GlobalAvgPool", "GlobalMaxPool", "GroupNorm", "LeakyReLU", "MaxPool3d", "ReLU", "SiLU", "ToBEV", "ToDense",
    "functional", "fuse",
]
