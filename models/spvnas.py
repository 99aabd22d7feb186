"""SPVNAS subnets (Tang et al., ECCV 2020): a searched SPVCNN, built from the search's `net.config` or inferred
from a checkpoint's shapes alone, with the key names of the released ("determinized") checkpoints."""

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

import torchsparse
import torchsparse.nn as spnn
import torchsparse.nn.functional as F
from torchsparse import PointTensor, SparseTensor
from torchsparse.models.spvcnn import fuse_points, points_to_voxels
from torchsparse.nn.functional.point_voxel import Orphans

__all__ = ["SPVNAS", "infer_spvnas_config"]

CLASSIFIER_WIDTH = 128  # the supernet's widest last stage; released subnets keep the full classifier


class _ConvUnit(nn.Module):
    def __init__(
        self, in_channels, out_channels, kernel_size=3, stride=1, transposed=False, relu=True
    ) -> None:
        super().__init__()
        layers = [
            (
                "conv",
                spnn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, transposed=transposed),
            ),
            ("bn", spnn.BatchNorm(out_channels)),
        ]
        if relu:
            layers.append(("relu", spnn.ReLU(True)))
        self.net = nn.Sequential(OrderedDict(layers))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.net(x)


class _LinearUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                conv=nn.Linear(in_channels, out_channels), bn=nn.BatchNorm1d(out_channels), relu=nn.ReLU(True)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Residual(nn.Module):
    """ReLU(net(x) + downsample(x)) with net = [unit k3 (ReLU), unit k3 (no ReLU)]."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, project: bool) -> None:
        super().__init__()
        if not project and in_channels != out_channels:
            raise ValueError(
                f"a block without downsample must keep its width, got {in_channels} -> {out_channels}"
            )
        self.net = nn.Sequential(
            _ConvUnit(in_channels, mid_channels), _ConvUnit(mid_channels, out_channels, relu=False)
        )
        self.downsample = _ConvUnit(in_channels, out_channels, 1, relu=False) if project else nn.Identity()
        self.relu = spnn.ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.relu(self.net(x) + self.downsample(x))

    def fuse_residual(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """For `torchsparse.nn.fuse`, once the units are folded: (first unit, the second unit's conv, downsample)."""
        _, last = spnn.fusion.last_fused_conv(self.net[1].net)
        return self.net[0], last, self.downsample


class _Classifier(nn.Module):
    """Linear layer stored at the supernet's width and sliced to the subnet's last stage, as released."""

    def __init__(self, in_channels: int, stored_width: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.linear = nn.Linear(stored_width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.linear.weight[:, : self.in_channels], self.linear.bias)


def _stage_config(config: Mapping[str, Any], prefix: str) -> tuple[int, list[tuple[int, int, bool]]]:
    """(transition width, [(mid, out, has downsample) per residual block]) of one stage of a net.config."""
    try:
        transition = int(config[f"{prefix}.transition"])
        depth = int(config[f"{prefix}.feature"])
        blocks = []
        for j in range(depth):
            key = f"{prefix}.feature.layers.{j}"
            blocks.append(
                (
                    int(config[f"{key}.net.layers.0"]),
                    int(config[f"{key}.net.layers.1"]),
                    config.get(f"{key}.downsample") is not None,
                )
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"net.config is missing or has a bad value for stage {prefix!r}: {error}") from None
    return transition, blocks


class SPVNAS(nn.Module):
    """A determinized SPVNAS subnet.

    Args:
        config: the search's `net.config` (keys such as "output_channels", "downsample.0.transition",
            "downsample.0.feature", "downsample.0.feature.layers.0.net.layers.0", ..., "point_transforms.0",
            "num_classes", "pres", "vres"); see tests/models/reference/spvnas_example_net_config.json.
        in_channels: input features per voxel.
        classifier_width: stored width of the classifier; default config["classifier_width"] if present, else
            128 (every release).
        orphans: `point_to_voxel` policy; "clamp" as TorchSparse v2.1.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        in_channels: int = 4,
        classifier_width: int | None = None,
        orphans: Orphans = "clamp",
    ) -> None:
        super().__init__()
        try:
            stem = int(config["output_channels"][0])
            num_classes = int(config["num_classes"])
            point_widths = [int(config[f"point_transforms.{i}"]) for i in range(3)]
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(
                f"net.config lacks output_channels, num_classes or point_transforms: {error}"
            ) from None
        self.config = dict(config)
        self.pres, self.vres = float(config.get("pres", 0.05)), float(config.get("vres", 0.05))
        self.orphans = orphans
        self.stem = nn.Sequential(
            spnn.Conv3d(in_channels, stem, 3),
            spnn.BatchNorm(stem),
            spnn.ReLU(True),
            spnn.Conv3d(stem, stem, 3),
            spnn.BatchNorm(stem),
            spnn.ReLU(True),
        )
        widths = [stem]
        self.downsample = nn.ModuleList()
        for i in range(4):
            transition, blocks = _stage_config(config, f"downsample.{i}")
            self.downsample.append(self._stage(_ConvUnit(widths[-1], transition, 2, 2), transition, blocks))
            widths.append(blocks[-1][1] if blocks else transition)
        self.upsample = nn.ModuleList()
        for i in range(4):
            transition, blocks = _stage_config(config, f"upsample.{i}")
            deconv = _ConvUnit(widths[-1], transition, 2, 2, transposed=True)
            self.upsample.append(self._stage(deconv, transition + widths[3 - i], blocks))
            widths.append(blocks[-1][1] if blocks else transition + widths[3 - i])
        expected = [widths[4], widths[6], widths[8]]
        if point_widths != expected:
            raise ValueError(
                f"net.config point_transforms {point_widths} must equal the widths {expected} they join"
            )
        self.widths = widths
        self.point_transforms = nn.ModuleList(
            [
                _LinearUnit(widths[0], widths[4]),
                _LinearUnit(widths[4], widths[6]),
                _LinearUnit(widths[6], widths[8]),
            ]
        )
        if classifier_width is None:
            classifier_width = int(config.get("classifier_width", CLASSIFIER_WIDTH))
        if classifier_width < widths[8]:
            raise ValueError(
                f"classifier_width {classifier_width} is narrower than the last stage ({widths[8]})"
            )
        self.classifier = _Classifier(widths[8], classifier_width, num_classes)
        self.dropout = nn.Dropout(0.3, True)

    @staticmethod
    def _stage(transition: nn.Module, width: int, blocks: list[tuple[int, int, bool]]) -> nn.Module:
        feature = nn.Sequential()
        for mid, out, project in blocks:
            feature.append(_Residual(width, mid, out, project))
            width = out
        return nn.Sequential(OrderedDict(transition=transition, feature=feature))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], **kwargs) -> "SPVNAS":
        """Builds the subnet a released checkpoint describes, from its tensor shapes alone."""
        return cls(infer_spvnas_config(state_dict), **kwargs)

    def forward(self, x: SparseTensor) -> Tensor:
        """Per-point logits: x as for SPVCNN; returns float (N, num_classes) in x's row order."""
        z = PointTensor(x.feats, x.coords)  # converted exactly (never narrower than float32)
        x0, z = F.initial_voxelize(z, self.pres, self.vres)
        x0 = self.stem(x0)
        z0 = F.voxel_to_point(x0, z)
        levels = [x0]
        y = F.point_to_voxel(x0, z0, self.orphans)
        for stage in self.downsample:
            y = stage(y)
            levels.append(y)
        z1 = self._fuse(levels[4], z0, 0)
        y = self._up(1, self._up(0, self._to_voxels(levels[4], z1), levels[3]), levels[2])
        z2 = self._fuse(y, z1, 1)
        y = self._up(3, self._up(2, self._to_voxels(y, z2), levels[1]), levels[0])
        z3 = self._fuse(y, z2, 2)
        return self.classifier(z3.feats)

    def _up(self, i: int, y: SparseTensor, skip: SparseTensor) -> SparseTensor:
        stage = self.upsample[i]
        return stage.feature(torchsparse.cat([stage.transition(y), skip]))

    def _fuse(self, x: SparseTensor, z: PointTensor, i: int) -> PointTensor:
        return fuse_points(x, z, self.point_transforms[i])

    def _to_voxels(self, x: SparseTensor, z: PointTensor) -> SparseTensor:
        return points_to_voxels(x, z, self.orphans, self.dropout)


def infer_spvnas_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Reads a subnet's net.config back from the shapes of its determinized state dict.

    Raises:
        ValueError: when a key the architecture needs is missing or has an unexpected shape.
    """

    def shape(key: str, dims: int) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"not an SPVNAS subnet state dict: missing {key!r}")
        value = tuple(state_dict[key].shape)
        if len(value) != dims:
            raise ValueError(f"{key!r} has shape {list(value)}, expected {dims} dimensions")
        return value

    config: dict[str, Any] = {}
    widths = [shape("stem.0.kernel", 3)[2]]
    for kind in ("downsample", "upsample"):
        for i in range(4):
            prefix = f"{kind}.{i}"
            config[f"{prefix}.transition"] = shape(f"{prefix}.transition.net.conv.kernel", 3)[2]
            depth = 0
            while f"{prefix}.feature.{depth}.net.0.net.conv.kernel" in state_dict:
                block = f"{prefix}.feature.{depth}"
                key = f"{prefix}.feature.layers.{depth}"
                config[f"{key}.net"] = 2
                config[f"{key}.net.layers.0"] = shape(f"{block}.net.0.net.conv.kernel", 3)[2]
                config[f"{key}.net.layers.1"] = shape(f"{block}.net.1.net.conv.kernel", 3)[2]
                if f"{block}.downsample.net.conv.kernel" in state_dict:
                    config[f"{key}.downsample"] = shape(f"{block}.downsample.net.conv.kernel", 2)[1]
                depth += 1
            config[f"{prefix}.feature"] = depth
            width = config[f"{prefix}.transition"] + (widths[7 - len(widths)] if kind == "upsample" else 0)
            widths.append(config[f"{prefix}.feature.layers.{depth - 1}.net.layers.1"] if depth else width)
    for i in range(3):
        config[f"point_transforms.{i}"] = shape(f"point_transforms.{i}.net.conv.weight", 2)[0]
    classifier = shape("classifier.linear.weight", 2)
    config["output_channels"] = widths
    config["num_classes"] = classifier[0]
    config["classifier_width"] = classifier[1]
    config["pres"] = config["vres"] = 0.05
    return config
