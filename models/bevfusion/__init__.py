"""BEVFusion (camera + LiDAR fusion in bird's-eye view) on torchsparse, imported as torchsparse.models.bevfusion.

No mmcv / mmdet / mmdet3d / torchvision: Swin-T, GeneralizedLSSFPN, DepthLSS / LSS view transforms with bev_pool,
the LiDAR SparseEncoder on our engine (spconv semantics), ConvFuser, SECOND + SECONDFPN, the TransFusion head and
the BEV map-segmentation head. State-dict keys and shapes equal the official detection checkpoint's.
"""

from torchsparse.models.bevfusion.checkpoint import (
    load_official_checkpoint,
    native_state_dict,
    read_official_state_dict,
)
from torchsparse.models.bevfusion.head import CLASS_NAMES
from torchsparse.models.bevfusion.model import TASKS, BEVFusion
from torchsparse.models.bevfusion.seg import MAP_CLASSES

__all__ = [
    "CLASS_NAMES",
    "MAP_CLASSES",
    "TASKS",
    "BEVFusion",
    "load_official_checkpoint",
    "native_state_dict",
    "read_official_state_dict",
]
