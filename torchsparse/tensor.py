"""SparseTensor (features on active voxels) and PointTensor (features on float points), with the caches a
network shares along its layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchsparse.ops.checks import run_time_check
from torchsparse.ops.hashing import BATCH_MAX, COORD_MAX, COORD_MIN, MAX_GEOMETRY
from torchsparse.ops.kernel_map import SortedIndex

Stride = tuple[int, int, int]


def as_tensor(value, name: str) -> Tensor:
    """A torch.Tensor viewing `value` without a copy: tensors as they are, any other object with ``__dlpack__``
    (NumPy on the CPU, CuPy on a GPU, JAX, ...) through DLPack, sharing its memory.

    Raises:
        TypeError: `value` is neither a tensor nor a DLPack exporter.
    """
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "__dlpack__"):
        return torch.from_dlpack(value)
    raise TypeError(f"{name} must be a torch.Tensor or an array with __dlpack__, got {type(value).__name__}")


def to_triple(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int, int]:
    """Normalises an int or a 3-sequence of ints to a 3-tuple, checking minimum <= each value <= MAX_GEOMETRY."""
    if isinstance(value, int):
        values = (value,) * 3
    elif isinstance(value, Sequence):
        values = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or 3 ints, got {value!r}")
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be an int or 3 ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
    if any(v > MAX_GEOMETRY for v in values):
        raise ValueError(f"{name} values must be <= {MAX_GEOMETRY} (the extent of the coordinate range), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass
class TensorCache:
    """State shared by every tensor of one network pass (never global).

    Attributes:
        coords: the coordinates seen at each tensor stride (the first set recorded for a stride wins); a
            transposed convolution finds its output sites here.
        spatial_ranges: spatial range (B, X, Y, Z) recorded with each stride's coordinates, or None.
        indices: per stride, (coords, sorted index of those coords) for kernel-map queries.
        kmaps: kernel maps by (kind, tensor stride, kernel size, stride, dilation, base, ...), each stored as
            (input coords, output coords, map) and valid only for those very coordinate tensors.
        num_samples: max batch index + 1 of the pass, read from the device once (see SparseTensor.num_samples).
        choices: dataflows measured in this pass by layer group (`F.conv3d`'s `choices`): a layer whose group
            was measured earlier in the pass takes that choice instead of measuring again.
    """

    coords: dict[Stride, Tensor] = field(default_factory=dict)
    spatial_ranges: dict[Stride, tuple[int, int, int, int] | None] = field(default_factory=dict)
    indices: dict[Stride, tuple[Tensor, SortedIndex]] = field(default_factory=dict)
    kmaps: dict[tuple, tuple[Tensor, Tensor, Any]] = field(default_factory=dict)
    num_samples: int | None = None
    choices: dict = field(default_factory=dict)

    def record(self, stride: Stride, coords: Tensor, spatial_range) -> None:
        if stride not in self.coords:
            self.coords[stride] = coords
            self.spatial_ranges[stride] = spatial_range


class SparseTensor:
    """Features on a set of active voxels.

    Args:
        feats: floating (N, C) features, finite.
        coords: int32 (N, 4) unique voxel coordinates as (batch, x, y, z), batch index >= 0 (other integer
            dtypes are converted). feats and coords may also be any array with ``__dlpack__`` (NumPy, CuPy),
            viewed without a copy. x, y, z are compact: a tensor at stride s stores floor(c / s).
        stride: tensor stride per axis (int or 3 ints, >= 1).
        spatial_range: optional (B, X, Y, Z) extent in compact coordinates, needed by `dense()`.

    Tensors produced by layers share `cache` (coordinates per stride, sorted indices, kernel maps) with their
    input. Duplicate coordinates are reported when the first convolution builds its sorted index. Every check
    also holds in graphs compiled with torch.compile (see `check_sparse_values`).
    """

    def __init__(
        self,
        feats: Tensor,
        coords: Tensor,
        stride: int | Sequence[int] = 1,
        spatial_range: Sequence[int] | None = None,
    ) -> None:
        coords, feats = as_tensor(coords, "coords"), as_tensor(feats, "feats")
        _check_coords(coords)
        _check_feats(feats, coords)
        check_sparse_values(feats, coords)
        coords = coords.to(torch.int32).contiguous()
        self.feats = feats
        self.coords = coords
        self.stride = to_triple(stride, "stride")
        self.spatial_range = _check_spatial_range(spatial_range)
        self.cache = TensorCache()
        self.cache.record(self.stride, coords, self.spatial_range)

    @property
    def num_samples(self) -> int:
        """Number of samples B: spatial_range[0] when known, else max batch index + 1 (0 when empty).

        Without a spatial range the batch indices are read from the device once per network pass (every tensor of
        the pass has the same samples) and kept in the cache: one host synchronisation per forward, not one per
        layer.
        """
        if self.spatial_range is not None:
            return self.spatial_range[0]
        if self.cache.num_samples is None or torch.compiler.is_compiling():
            count = int(self.coords[:, 0].max()) + 1 if self.coords.shape[0] else 0
            if torch.compiler.is_compiling():
                return count
            self.cache.num_samples = count
        return self.cache.num_samples

    @classmethod
    def _derived(cls, feats: Tensor, coords: Tensor, stride: Stride, spatial_range, cache: TensorCache):
        """A tensor produced by a layer: no validation, shares the cache."""
        out = cls.__new__(cls)
        out.feats, out.coords, out.stride, out.spatial_range, out.cache = feats, coords, stride, spatial_range, cache
        cache.record(stride, coords, spatial_range)
        return out

    def replace(self, feats: Tensor) -> SparseTensor:
        """Same sites, stride and cache with new features of shape (N, C')."""
        if feats.dim() != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"feats must be ({self.coords.shape[0]}, C), got {tuple(feats.shape)}")
        return SparseTensor._derived(feats, self.coords, self.stride, self.spatial_range, self.cache)

    @property
    def shape(self) -> torch.Size:
        return self.feats.shape

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def __len__(self) -> int:
        return self.coords.shape[0]

    def __repr__(self) -> str:
        return (
            f"SparseTensor(num_points={len(self)}, channels={self.feats.shape[1]}, stride={self.stride}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    def to(self, *args, **kwargs) -> SparseTensor:
        """Like `Tensor.to` on the features; coordinates follow the device. A new device gets a new cache."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.coords.device:
            return self.replace(feats)
        return SparseTensor._derived(feats, self.coords.to(feats.device), self.stride, self.spatial_range, TensorCache())

    def cpu(self) -> SparseTensor:
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> SparseTensor:
        return self.to(torch.device("cuda", device) if device is not None else torch.device("cuda"))

    def half(self) -> SparseTensor:
        return self.replace(self.feats.half())

    def float(self) -> SparseTensor:
        return self.replace(self.feats.float())

    def double(self) -> SparseTensor:
        return self.replace(self.feats.double())

    def detach(self) -> SparseTensor:
        return self.replace(self.feats.detach())

    def dense(self) -> Tensor:
        """Scatters the features into a zero-filled dense grid.

        Returns:
            (B, C, X, Y, Z) with (B, X, Y, Z) = spatial_range; differentiable in the features.
        """
        if self.spatial_range is None:
            raise ValueError("dense() needs spatial_range; pass spatial_range=(B, X, Y, Z) to SparseTensor")
        check_within_range(self.coords, list(self.spatial_range))
        b, x, y, z = self.coords.long().unbind(1)
        grid = self.feats.new_zeros((*self.spatial_range, self.feats.shape[1]))
        grid = grid.index_put((b, x, y, z), self.feats)
        return grid.permute(0, 4, 1, 2, 3).contiguous()

    def _check_same_sites(self, other: SparseTensor, op: str) -> None:
        if not isinstance(other, SparseTensor):
            raise TypeError(f"{op} needs a SparseTensor, got {type(other).__name__}")
        if other.stride != self.stride:
            raise ValueError(f"{op} needs equal strides, got {self.stride} and {other.stride}")
        if other.coords is not self.coords:
            message = f"{op} needs identical coordinates (same sites in the same order)"
            torch._check_value(other.coords.shape[0] == self.coords.shape[0], lambda: message)
            check_same_sites(self.coords, other.coords, message)

    def __add__(self, other: SparseTensor | Tensor | float) -> SparseTensor:
        if isinstance(other, SparseTensor):
            self._check_same_sites(other, "+")
            return self.replace(self.feats + other.feats)
        return self.replace(self.feats + other)

    __radd__ = __add__


@dataclass
class PointCache:
    """Point-to-voxel queries shared by the point tensors of one network pass.

    Attributes:
        queries: by (voxel stride, neighbours), the voxel coordinates queried and the result (idx int64
            (N, neighbours), weights (N, neighbours)); reused only for those very coordinate tensors.
    """

    queries: dict[tuple[Stride, int], tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


class PointTensor:
    """Features on float points: the point branch of SPVConv (SPVCNN, SPVNAS).

    Args:
        feats: floating (N, C) features, finite.
        coords: (N, 4) point coordinates (batch, x, y, z) in stride-1 voxel units (metres / voxel size), finite;
            the batch column holds integers in [0, BATCH_MAX]. Stored as `point_coords_dtype` of both dtypes
            (float32 or float64, never narrower than given), so that float16 features do not round them.

    Point tensors derived with `replace` share `cache` (point-to-voxel queries per stride).
    """

    def __init__(self, feats: Tensor, coords: Tensor) -> None:
        if not isinstance(coords, Tensor):
            raise TypeError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
        if coords.is_complex() or coords.dtype == torch.bool:
            raise TypeError(f"coords must be a real tensor, got {coords.dtype}")
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be (N, 4) as (batch, x, y, z), got {tuple(coords.shape)}")
        _check_feats(feats, coords)
        coords = coords.to(point_coords_dtype(feats.dtype, coords.dtype)).contiguous()
        check_point_values(feats, coords)
        self.feats = feats
        self.coords = coords
        self.cache = PointCache()

    def replace(self, feats: Tensor) -> PointTensor:
        """Same points and cache with new features of shape (N, C')."""
        if feats.dim() != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"feats must be ({self.coords.shape[0]}, C), got {tuple(feats.shape)}")
        out = PointTensor.__new__(PointTensor)
        out.feats, out.coords, out.cache = feats, self.coords, self.cache
        return out

    def __len__(self) -> int:
        return self.coords.shape[0]

    def __repr__(self) -> str:
        return f"PointTensor(num_points={len(self)}, channels={self.feats.shape[1]}, dtype={self.feats.dtype})"


def cat(inputs: Sequence[SparseTensor]) -> SparseTensor:
    """Concatenates the features of tensors with identical coordinates along channels.

    Args:
        inputs: tensors with equal stride and identical coordinates, features (N, C_i).

    Returns:
        Tensor with features (N, sum C_i), sharing the first input's cache.
    """
    if not inputs:
        raise ValueError("cat needs at least one SparseTensor")
    first = inputs[0]
    for other in inputs[1:]:
        first._check_same_sites(other, "cat")
    return first.replace(torch.cat([x.feats for x in inputs], dim=1))


def point_coords_dtype(feats_dtype: torch.dtype, coords_dtype: torch.dtype) -> torch.dtype:
    """dtype of a PointTensor's coordinates: the widest of float32, the features' and the given coordinates'
    floating dtype; integer coordinates (|c| < 2**24 in any valid input) are exact in float32."""
    dtype = torch.promote_types(feats_dtype, torch.float32)
    return torch.promote_types(dtype, coords_dtype) if coords_dtype.is_floating_point else dtype


def _check_coords(coords: Tensor) -> None:
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool:
        raise TypeError(f"coords must be an integer tensor, got {coords.dtype}; quantize first (sparse_quantize)")
    if coords.dim() != 2 or coords.shape[1] != 4:
        hint = " (missing the batch column?)" if coords.dim() == 2 and coords.shape[1] == 3 else ""
        raise ValueError(f"coords must be (N, 4) as (batch, x, y, z), got {tuple(coords.shape)}{hint}")


def _check_feats(feats: Tensor, coords: Tensor) -> None:
    if not isinstance(feats, Tensor):
        raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
    if not feats.is_floating_point():
        raise TypeError(f"feats must be a floating tensor, got {feats.dtype}")
    if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"feats must be (N, C) with N = {coords.shape[0]} (rows of coords), got {tuple(feats.shape)}")
    if feats.device != coords.device:
        raise ValueError(f"feats and coords must be on the same device, got {feats.device} and {coords.device}")


def _check_spatial_range(spatial_range) -> tuple[int, int, int, int] | None:
    if spatial_range is None:
        return None
    values = tuple(int(v) for v in spatial_range)
    if len(values) != 4 or any(v <= 0 for v in values):
        raise ValueError(f"spatial_range must be 4 positive ints (B, X, Y, Z), got {spatial_range!r}")
    return values  # type: ignore[return-value]


# Checks of tensor values: operators that also run inside compiled graphs (see `run_time_check`).


def _raise_unless_finite(values: Tensor, name: str) -> None:
    if values.numel() > 0 and not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contain NaN or inf")


@run_time_check("check_sparse_values")
def check_sparse_values(feats: Tensor, coords: Tensor) -> None:
    """Raises ValueError unless the features are finite and the coordinates packable.

    Args:
        feats: floating (N, C).
        coords: integer (N, 4) as (batch, x, y, z): batch in [0, BATCH_MAX], x, y, z in [COORD_MIN, COORD_MAX].
    """
    _raise_unless_finite(feats, "feats")
    if coords.shape[0] == 0:
        return
    low = coords.amin(0).tolist()
    high = coords.amax(0).tolist()
    if low[0] < 0:
        raise ValueError(f"coords batch index must be >= 0, got {low[0]}")
    if high[0] > BATCH_MAX or min(low[1:]) < COORD_MIN or max(high[1:]) > COORD_MAX:
        raise ValueError(
            f"coords out of range: batch must be in [0, {BATCH_MAX}] and x, y, z in [{COORD_MIN}, "
            f"{COORD_MAX}], got batch up to {high[0]}, x, y, z in [{min(low[1:])}, {max(high[1:])}]"
        )


@run_time_check("check_point_values")
def check_point_values(feats: Tensor, coords: Tensor) -> None:
    """Raises ValueError unless features and coordinates are finite and the batch column holds integers.

    Args:
        feats: floating (N, C).
        coords: floating (N, 4) as (batch, x, y, z), batch integral in [0, BATCH_MAX].
    """
    _raise_unless_finite(feats, "feats")
    _raise_unless_finite(coords, "coords")
    batch = coords[:, 0]
    if batch.numel() > 0 and (
        bool((batch < 0).any()) or bool((batch != batch.floor()).any()) or float(batch.max()) > BATCH_MAX
    ):
        raise ValueError(f"coords batch column must hold integers in [0, {BATCH_MAX}]")


@run_time_check("check_unique")
def check_unique(repeated: Tensor) -> None:
    """Raises ValueError when `repeated` (int64 0-dim: repeated coordinate rows, from `sorted_index`) is not 0."""
    if int(repeated):
        raise ValueError(f"coords contain {int(repeated)} duplicate rows; merge them first (e.g. with sparse_quantize)")


@run_time_check("check_within_range")
def check_within_range(coords: Tensor, spatial_range: list[int]) -> None:
    """Raises ValueError unless int32 (N, 4) coords lie in [0, spatial_range) per column (B, X, Y, Z)."""
    if coords.shape[0] == 0:
        return
    low = coords.amin(0).tolist()
    high = coords.amax(0).tolist()
    if min(low) < 0 or any(h >= r for h, r in zip(high, spatial_range)):
        raise ValueError(f"coords span {low}..{high}, outside spatial_range {tuple(spatial_range)} (batch, x, y, z)")


@run_time_check("check_same_sites")
def check_same_sites(coords: Tensor, other: Tensor, message: str) -> None:
    """Raises ValueError(message) unless the int32 (N, 4) coordinate tensors are equal."""
    if not torch.equal(coords, other):
        raise ValueError(message)
