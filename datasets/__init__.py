"""Dataset loaders, transforms and metrics; imported as torchsparse.datasets."""

from torchsparse.datasets.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_iou_table,
    iou_official,
    iou_spvnas,
)
from torchsparse.datasets.semantic_kitti import (
    COLOR_MAP_BGR,
    OFFICIAL,
    OFFICIAL_CLASS_NAMES,
    RAW_LABEL_NAMES,
    SPLITS,
    SPVNAS,
    LabelMap,
    SemanticKITTI,
    collate_fn,
    get_label_map,
    read_labels,
    read_scan,
    seed_worker,
    voxelize_scan,
    write_labels,
)

__all__ = [
    "COLOR_MAP_BGR",
    "ConfusionMatrix",
    "LabelMap",
    "OFFICIAL",
    "OFFICIAL_CLASS_NAMES",
    "RAW_LABEL_NAMES",
    "SPLITS",
    "SPVNAS",
    "SemanticKITTI",
    "collate_fn",
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
