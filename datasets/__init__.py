"""Dataset loaders, transforms and metrics; imported as torchsparse.datasets."""

from torchsparse.datasets.semantic_kitti import (
    COLOR_MAP_BGR,
    OFFICIAL,
    OFFICIAL_CLASS_NAMES,
    RAW_LABEL_NAMES,
    SPLITS,
    SPVNAS,
    LabelMap,
    SemanticKITTI,
    collate_semantic_kitti,
    get_label_map,
    read_labels,
    read_scan,
    seed_worker,
    voxelize_scan,
    write_labels,
)
from torchsparse.datasets.semantic_kitti_metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_iou_table,
    iou_official,
    iou_spvnas,
)

__all__ = [
    "COLOR_MAP_BGR",
    "OFFICIAL",
    "OFFICIAL_CLASS_NAMES",
    "RAW_LABEL_NAMES",
    "SPLITS",
    "SPVNAS",
    "ConfusionMatrix",
    "LabelMap",
    "SemanticKITTI",
    "collate_semantic_kitti",
    "confusion_matrix",
    "format_iou_table",
    "get_label_map",
    "iou_official",
    "iou_spvnas",
    "read_labels",
    "read_scan",
    "seed_worker",
    "voxelize_scan",
    "write_labels",
]
