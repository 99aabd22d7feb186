"""BEVFusion's BEV map-segmentation head in plain PyTorch, with the official state-dict keys.

`BEVGridTransform` resamples the decoder's BEV map onto the label grid (bilinear `grid_sample`), then
`BEVSegmentationHead` classifies every cell with two 3 x 3 conv-BN-ReLU layers and a 1 x 1 conv, one sigmoid
output per map class (classes may overlap: multi-label, not softmax).

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/heads/segm/vanilla.py, configs/nuscenes/default.yaml
(map_classes; labels on a +-50 m grid at 0.5 m), configs/nuscenes/seg/default.yaml (the head: 256 channels,
input scope +-51.2 m at 0.8 m, output scope +-50 m at 0.5 m, focal loss) and configs/nuscenes/seg/
fusion-bev256d2-lss.yaml (512 channels after SECONDFPN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "MAP_CLASSES",
    "BEVGridTransform",
    "BEVSegmentationHead",
    "sigmoid_focal_loss",
    "sigmoid_xent_loss",
]

# configs/nuscenes/default.yaml, map_classes, in label order.
MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")

# configs/nuscenes/seg/default.yaml: (lower, upper, step) per BEV axis (x, then y), metres.
INPUT_SCOPE = ((-51.2, 51.2, 0.8), (-51.2, 51.2, 0.8))
OUTPUT_SCOPE = ((-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5))


def sigmoid_xent_loss(inputs: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy on logits, computed in float32."""
    return F.binary_cross_entropy_with_logits(inputs.float(), targets.float(), reduction=reduction)


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = -1, gamma: float = 2, reduction: str = "mean"
) -> Tensor:
    """Focal loss on logits (Lin et al. 2017), float32: BCE * (1 - p_t) ** gamma, weighted by alpha_t when
    alpha >= 0 (the reference's default alpha = -1 disables the weighting)."""
    inputs, targets = inputs.float(), targets.float()
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class BEVGridTransform(nn.Module):
    """Bilinear resampling of a BEV map from its own grid onto another metric grid.

    Output cell (i, j) is sampled at the metric position (omin_x + (i + 0.5) ostep_x, omin_y + (j + 0.5)
    ostep_y), i.e. the cell centre, on the input map read as covering [imin, imax] per axis with
    `grid_sample(..., align_corners=False)`; positions outside read zeros.

    Args:
        input_scope: ((xmin, xmax, xstep), (ymin, ymax, ystep)) of the input map; the steps are not used (the
            map is taken to span [min, max] whatever its size).
        output_scope: the same for the output grid; size = len(arange(min + step / 2, max, step)) per axis.
        prescale_factor: bilinear resize of the input before sampling when != 1.
    """

    def __init__(
        self,
        *,
        input_scope: Sequence[Sequence[float]] = INPUT_SCOPE,
        output_scope: Sequence[Sequence[float]] = OUTPUT_SCOPE,
        prescale_factor: float = 1,
    ) -> None:
        super().__init__()
        if len(input_scope) != 2 or len(output_scope) != 2:
            raise ValueError(
                f"input_scope and output_scope need (min, max, step) for x and y, got {input_scope}, "
                f"{output_scope}"
            )
        self.input_scope = tuple(tuple(float(v) for v in s) for s in input_scope)
        self.output_scope = tuple(tuple(float(v) for v in s) for s in output_scope)
        self.prescale_factor = prescale_factor

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X_in, Y_in) -> (B, C, X_out, Y_out), dim 2 along BEV x, dim 3 along y."""
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, X, Y), got {tuple(x.shape)}")
        if self.prescale_factor != 1:
            x = F.interpolate(x, scale_factor=self.prescale_factor, mode="bilinear", align_corners=False)
        coords = []
        for (imin, imax, _), (omin, omax, ostep) in zip(self.input_scope, self.output_scope):
            v = torch.arange(omin + ostep / 2, omax, ostep, device=x.device)
            coords.append((v - imin) / (imax - imin) * 2 - 1)
        u, v = torch.meshgrid(coords, indexing="ij")
        # grid_sample reads grid[..., 0] along the last input dim (y) and grid[..., 1] along dim 2 (x).
        grid = torch.stack([v, u], dim=-1).to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", align_corners=False)


class BEVSegmentationHead(nn.Module):
    """BEV map segmentation: grid transform, then Conv3x3-BN-ReLU x 2 (no bias) and a 1 x 1 conv to one logit
    per class (keys classifier.{0,1,3,4,6}.*; the transform holds no state).

    Args:
        in_channels: channels of the decoder output (256 in configs/nuscenes/seg/default.yaml, 512 with the
            SECONDFPN decoder of the fusion config).
        grid_transform: keyword arguments of BEVGridTransform.
        classes: class names, in output-channel order.
        loss: "focal" (the configs) or "xent".
    """

    def __init__(
        self,
        in_channels: int = 256,
        grid_transform: dict | None = None,
        classes: Sequence[str] = MAP_CLASSES,
        loss: str = "focal",
    ) -> None:
        super().__init__()
        if loss not in ("focal", "xent"):
            raise ValueError(f"loss must be 'focal' or 'xent', got {loss!r}")
        self.in_channels = in_channels
        self.classes = tuple(classes)
        self.loss = loss
        self.transform = BEVGridTransform(**(grid_transform or {}))
        self.classifier = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(True),
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(True),
            nn.Conv2d(in_channels, len(self.classes), 1),
        )

    def forward(
        self, x: Tensor | Sequence[Tensor], target: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        """Segments a BEV feature map.

        Args:
            x: (B, in_channels, X, Y), or a list/tuple whose first entry is that (a neck's outputs).
            target: (B, num_classes, X_out, Y_out) binary masks; required in training mode.

        Returns:
            training: {"<class>/<loss>": scalar loss} per class; eval: (B, num_classes, X_out, Y_out)
            probabilities (sigmoid). With the default scopes X_out = Y_out = 200 (+-50 m at 0.5 m).
        """
        if isinstance(x, (list, tuple)):
            x = x[0]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, X, Y), got {tuple(x.shape)}")
        x = self.classifier(self.transform(x))
        if not self.training:
            return torch.sigmoid(x)
        if target is None or target.shape != x.shape:
            got = None if target is None else tuple(target.shape)
            raise ValueError(f"training needs target of shape {tuple(x.shape)}, got {got}")
        loss_fn = sigmoid_focal_loss if self.loss == "focal" else sigmoid_xent_loss
        return {f"{name}/{self.loss}": loss_fn(x[:, i], target[:, i]) for i, name in enumerate(self.classes)}
