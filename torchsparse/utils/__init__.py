"""Data utilities: voxelisation and batching."""

from torchsparse.utils.collate import sparse_collate, sparse_collate_fn
from torchsparse.utils.quantize import sparse_quantize

__all__ = ["sparse_collate", "sparse_collate_fn", "sparse_quantize"]
