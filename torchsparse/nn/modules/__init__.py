"""Sparse layers as torch.nn modules."""

from torchsparse.nn.modules.bev import ToBEV, ToDense
from torchsparse.nn.modules.bev_pool import BEVPool
from torchsparse.nn.modules.conv import Conv3d
from torchsparse.nn.modules.elementwise import BatchNorm, Dropout, GroupNorm, LeakyReLU, ReLU, SiLU
from torchsparse.nn.modules.pooling import AvgPool3d, GlobalAvgPool, GlobalMaxPool, MaxPool3d

__all__ = [
    "AvgPool3d", "BEVPool", "BatchNorm", "Conv3d", "Dropout", "GlobalAvgPool", "GlobalMaxPool", "GroupNorm", "LeakyReLU",
    "MaxPool3d", "ReLU", "SiLU", "ToBEV", "ToDense",
]
