"""Class lists shared by models and datasets: a model predicts in this order and a dataset labels in it, and
neither imports the other (both import this module)."""

__all__ = ["NUSCENES_DETECTION_CLASSES"]

# nuScenes detection classes in label order (nuscenes-devkit's detection_cvpr_2019 classes, in the order of
# BEVFusion's and mmdet3d's NuScenesDataset.CLASSES).
NUSCENES_DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
