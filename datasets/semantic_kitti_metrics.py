"""SemanticKITTI segmentation metrics: confusion matrices and the two SemanticKITTI IoU conventions.

Confusion matrices here have ground truth along rows and predictions along columns: ``conf[g, p]`` counts
points of true class g predicted as p. (semantic-kitti-api stores the transpose; the statistics are equal.)

* `iou_official`: semantic-kitti-api ``evaluate_semantics.py`` with ``auxiliary/np_ioueval.py``, on the
  official 20 learned classes. Points whose ground truth is 0 are ignored; a prediction of 0 on a labelled
  point is a false negative of its true class; per class IoU = tp / (tp + fp + fn); a class absent from both
  ground truth and predictions has IoU 0; mIoU averages classes 1..19. Accuracy is the api's ``getacc``:
  correct points over labelled points whose prediction is not 0 (a labelled point predicted 0 is left out of
  both numerator and denominator). ``accuracy_all_labelled`` counts it as wrong instead.
* `iou_spvnas`: SPVNAS ``core/callbacks.py`` ``MeanIoU`` on its 19 classes, with points labelled 255 removed
  before the matrix is built; per class IoU = correct / (seen + positive - correct), and a class never seen in
  the ground truth has IoU 1 (even when it was predicted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchsparse.datasets.semantic_kitti import OFFICIAL, SPVNAS

__all__ = ["ConfusionMatrix", "confusion_matrix", "format_iou_table", "iou_official", "iou_spvnas"]

Array = np.ndarray | Tensor


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def _as_tensor(values: Array, name: str) -> Tensor:
    if isinstance(values, Tensor):
        tensor = values
    elif isinstance(values, np.ndarray):
        tensor = torch.from_numpy(values)
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(values).__name__}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {tensor.dtype}")
    return tensor


def confusion_matrix(
    pred: Array, target: Array, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Counts (ground truth, prediction) pairs.

    Args:
        pred: integer array or tensor of predicted classes, any shape, values in 0..num_classes-1.
        target: integer array or tensor of ground-truth classes, pred's shape, values in 0..num_classes-1
            (or ``ignore_index``).
        num_classes: number of classes C.
        ignore_index: if given, points whose target equals it are left out before anything is checked or
            counted (255 for SPVNAS targets). Nothing is ignored by default.

    Returns:
        int64 (C, C) with [g, p] the number of points of ground truth g predicted as p (rows = ground truth).
    """
    num_classes = _check_num_classes(num_classes)
    p = _as_tensor(pred, "pred")
    t = _as_tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {tuple(p.shape)}, target has {tuple(t.shape)}; they must match")
    t = t.to(p.device).reshape(-1).long()
    p = p.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, values in (("pred", p), ("target", t)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            low, high = int(values.min()), int(values.max())
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1}, got {low}..{high}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


class ConfusionMatrix:
    """A confusion matrix accumulated over many batches.

    Args:
        num_classes: number of classes C.
        ignore_index: passed to `confusion_matrix`; None (the default) ignores nothing.

    Attributes:
        matrix: int64 (C, C) running counts, rows = ground truth, columns = prediction. It is the live array:
            in a distributed run, ``torch.distributed.all_reduce(torch.from_numpy(cm.matrix))`` sums it in
            place across processes.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Array, target: Array) -> None:
        """Adds the pairs of one batch; pred and target as in `confusion_matrix`."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        """Sets every count to zero."""
        self.matrix[...] = 0


def _check_conf(conf: Array, minimum: int) -> np.ndarray:
    array = conf.detach().cpu().numpy() if isinstance(conf, Tensor) else np.asarray(conf)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < minimum:
        raise ValueError(f"conf must be a square (C, C) matrix with C >= {minimum}, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"conf must hold integer counts, got {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError("conf must hold non-negative counts")
    return array.astype(np.int64)


def _class_names(names: Sequence[str] | None, default: Sequence[str], first: int, count: int) -> list[str]:
    if names is None:
        names = default if len(default) == count else [f"class_{k}" for k in range(first, first + count)]
    names = list(names)
    if len(names) != count:
        raise ValueError(f"class_names must have {count} entries, got {len(names)}")
    return names


def iou_official(conf: Array, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """IoU and accuracy as the SemanticKITTI benchmark computes them.

    semantic-kitti-api (``auxiliary/np_ioueval.py``) builds its matrix with predictions along rows, zeroes the
    ground-truth column of the ignore class 0 and then takes, per class c: tp = diag, fp = row sum - tp,
    fn = column sum - tp. In this module's layout (rows = ground truth) that is: drop row 0, keep column 0.

    * IoU of class c = tp / (tp + fp + fn); a prediction of 0 on a labelled point is a false negative of its
      true class and a false positive of no class.
    * ``getacc`` = sum(tp) / (sum over c >= 1 of tp + fp), and tp + fp of class c counts the labelled points
      predicted c. So the denominator holds the labelled points whose prediction is not 0: a labelled point
      predicted 0 counts neither right nor wrong (ground truth predicted 0 on 10 % of the points scores 1).

    The api adds 1e-15 to both denominators, so an empty union or an empty denominator gives 0 as here; for
    non-empty ones the two agree to about 1e-15 relative.

    Args:
        conf: integer (C, C) confusion matrix over learned classes 0..C-1 (C = 20 for the official map), rows
            = ground truth; class 0 is the ignore class.
        class_names: C - 1 names of classes 1..C-1; the official names when C = 20.

    Returns:
        dict with "iou" float64 (C - 1,) for classes 1..C-1, "miou" their mean, "accuracy" the api's
        ``getacc`` (above), "accuracy_all_labelled" correct points over every labelled point (a prediction of
        0 counts as wrong; equal to "accuracy" when no labelled point is predicted 0), "class_names",
        "metric" = "official".
    """
    matrix = _check_conf(conf, 2)
    labelled = matrix[1:]  # ground truth 0 is ignored, whatever was predicted
    tp = np.diag(matrix)[1:].astype(np.float64)
    fn = labelled.sum(axis=1) - tp  # the row includes column 0: predicting 0 on a labelled point is a miss
    predicted = labelled[:, 1:].sum(axis=0)  # labelled points predicted c, for c = 1..C-1 (the api's tp + fp)
    fp = predicted - tp
    union = tp + fp + fn
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    correct = tp.sum()
    scored, total = predicted.sum(), labelled.sum()
    return {
        "iou": iou,
        "miou": float(iou.mean()),
        "accuracy": float(correct / scored) if scored else 0.0,
        "accuracy_all_labelled": float(correct / total) if total else 0.0,
        "class_names": _class_names(class_names, OFFICIAL.class_names[1:], 1, matrix.shape[0] - 1),
        "metric": "official",
    }


def iou_spvnas(conf: Array, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """IoU as SPVNAS's MeanIoU callback computes it.

    Args:
        conf: integer (C, C) confusion matrix over classes 0..C-1 (C = 19 for the SPVNAS map), rows = ground
            truth, built after removing points labelled 255.
        class_names: C names; the SPVNAS names when C = 19.

    Returns:
        dict with "iou" float64 (C,) = correct / (seen + positive - correct), 1 for a class with no ground
        truth points, "miou" their mean, "accuracy" = trace / total (0 for an empty matrix), "class_names",
        "metric" = "spvnas".
    """
    matrix = _check_conf(conf, 1)
    correct = np.diag(matrix).astype(np.float64)
    seen = matrix.sum(axis=1).astype(np.float64)
    positive = matrix.sum(axis=0).astype(np.float64)
    union = seen + positive - correct
    iou = np.divide(correct, union, out=np.ones_like(correct), where=seen > 0)
    total = matrix.sum()
    return {
        "iou": iou,
        "miou": float(iou.mean()),
        "accuracy": float(correct.sum() / total) if total else 0.0,
        "class_names": _class_names(class_names, SPVNAS.class_names, 0, matrix.shape[0]),
        "metric": "spvnas",
    }


def format_iou_table(result: dict[str, Any]) -> str:
    """Renders the result of `iou_official` or `iou_spvnas` as a text table, percentages with 1 decimal.

    Returns:
        One header line naming the metric, one line per class, then the mIoU and accuracy lines.
    """
    for key in ("iou", "miou", "accuracy", "class_names", "metric"):
        if key not in result:
            raise ValueError(f"result lacks {key!r}; pass the dict returned by iou_official or iou_spvnas")
    names = list(result["class_names"])
    iou = np.asarray(result["iou"], dtype=np.float64)
    if len(names) != iou.shape[0]:
        raise ValueError(f"result has {len(names)} class names and {iou.shape[0]} IoU values")
    width = max([len(n) for n in names] + [len("accuracy")])
    lines = [f"{'class':<{width}}  IoU (%, {result['metric']})"]
    lines += [f"{name:<{width}}  {100 * value:5.1f}" for name, value in zip(names, iou)]
    lines.append(f"{'mIoU':<{width}}  {100 * result['miou']:5.1f}")
    lines.append(f"{'accuracy':<{width}}  {100 * result['accuracy']:5.1f}")
    return "\n".join(lines)
