"""Built-in workloads of point-based networks, generated from their published op sequences and sizes.

Each generator returns a `Workload` whose records follow `pointacc.workload.FIELDS`, in execution order, with
no index arrays (the mapping ops are described by their sizes; their pairs depend on the data). Conventions:

- Shared MLPs and fully connected layers are ``linear`` records over every row they apply to (batch folded into
  ``n``); BatchNorm is folded into the preceding layer and ReLU/dropout cost nothing, as in inference.
- Mapping ops (``fps``, ``knn``, ``ball_query``) are one record per point cloud, because every cloud is its own
  search problem: ``n_points`` is the size of the cloud searched and ``n_query`` the queries into it. Their
  names get a ``.b<i>`` suffix when batch > 1.
- ``gather`` reads ``n`` rows of ``c`` features by index (grouping); ``reduce`` pools ``n_in`` rows into
  ``n_out`` groups and carries ``reduction`` ("max" or "mean"). ``knn`` carries ``c``, the dimension of the
  space the distances are measured in.
- Every record has a unique ``name`` and a ``layer`` naming the module of the published architecture it
  belongs to.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

from pointacc.workload import Workload, check_op

__all__ = ["BUILTIN", "builtin", "dgcnn", "pointnet", "pointnet2_ssg"]


def _positive(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


class _Trace:
    """Collects validated op records with unique names."""

    def __init__(self, network: str, batch: int) -> None:
        self.network, self.batch, self.ops, self._names = network, batch, [], set()

    def add(self, op: str, name: str, layer: str, **fields) -> None:
        if name in self._names:
            raise RuntimeError(f"{self.network}: op name {name!r} generated twice")
        self._names.add(name)
        self.ops.append(check_op({"op": op, "name": name, "layer": layer, **fields}, f"{self.network} op {name}"))

    def per_cloud(self, op: str, name: str, layer: str, **fields) -> None:
        """One mapping record per point cloud of the batch."""
        for b in range(self.batch):
            self.add(op, name if self.batch == 1 else f"{name}.b{b}", layer, **fields)

    def mlp(self, prefix: str, n: int, c_in: int, widths: Sequence[int]) -> int:
        """A chain of linear layers named prefix.0, prefix.1, ...; returns the last width."""
        for i, c_out in enumerate(widths):
            self.add("linear", f"{prefix}.{i}", f"{prefix}.{i}", n=n, c_in=c_in, c_out=c_out)
            c_in = c_out
        return c_in

    def workload(self, **meta) -> Workload:
        return Workload(self.network, self.ops, {}, {"network": self.network, "batch": self.batch, **meta})


def _tnet(trace: _Trace, prefix: str, n_points: int, c_in: int, k: int) -> None:
    """PointNet's T-Net: shared MLP (64, 128, 1024), max pool, FC (512, 256, k*k), then the k x k transform
    applied to every point (a per-cloud (N x k)(k x k) product, recorded as a linear over all points)."""
    batch = trace.batch
    c = trace.mlp(f"{prefix}.conv", batch * n_points, c_in, (64, 128, 1024))
    trace.add("reduce", f"{prefix}.pool", prefix, n_in=batch * n_points, n_out=batch, c=c, reduction="max")
    trace.mlp(f"{prefix}.fc", batch, c, (512, 256, k * k))
    trace.add("linear", f"{prefix}.apply", prefix, n=batch * n_points, c_in=k, c_out=k)


def pointnet(num_points: int = 1024, num_classes: int = 40, batch: int = 1, transforms: bool = True) -> Workload:
    """PointNet classification network (Qi et al., CVPR 2017, Fig. 2 and supplementary Sec. C).

    Op sequence: [input T-Net (k = 3)] -> shared MLP (64, 64) -> [feature T-Net (k = 64)] -> shared MLP
    (64, 128, 1024) -> max pool over the points -> FC (512, 256, num_classes). Each T-Net is a shared MLP
    (64, 128, 1024), a max pool, FC (512, 256, k*k) and the k x k matrix applied to every point. With both
    T-Nets, 1024 points and 40 classes this is 3.46 M weights and 0.45 G MACs per cloud, against 3.5 M parameters
    and 440 M FLOPs in the paper's Table 6 (0.15 G MACs without the transforms; 148 M for "vanilla" PointNet).

    Args:
        num_points: points per cloud, >= 1.
        num_classes: output classes, >= 1.
        batch: point clouds, >= 1.
        transforms: include the input and the feature T-Nets (both, or neither).

    Returns:
        Workload "pointnet" of linear and reduce records.

    Raises:
        ValueError: a size that is not a positive integer.
    """
    _positive(num_points, "num_points")
    _positive(num_classes, "num_classes")
    _positive(batch, "batch")
    trace = _Trace("pointnet", batch)
    n = batch * num_points
    if transforms:
        _tnet(trace, "input_transform", num_points, 3, 3)
    c = trace.mlp("mlp1", n, 3, (64, 64))
    if transforms:
        _tnet(trace, "feature_transform", num_points, c, c)
    c = trace.mlp("mlp2", n, c, (64, 128, 1024))
    trace.add("reduce", "maxpool", "maxpool", n_in=n, n_out=batch, c=c, reduction="max")
    trace.mlp("fc", batch, c, (512, 256, num_classes))
    return trace.workload(num_points=num_points, num_classes=num_classes, transforms=transforms,
                          source="Qi et al., PointNet, CVPR 2017, Fig. 2, supp. Sec. C, Table 6")


def pointnet2_ssg(num_points: int = 1024, num_classes: int = 40, batch: int = 1) -> Workload:
    """PointNet++ single-scale-grouping classification network (Qi et al., NeurIPS 2017, supplementary Sec. B.1).

    Set abstraction levels SA(npoint, radius, nsample, MLP), on xyz input without normals:
    SA(512, 0.2, 32, [64, 64, 128]) -> SA(128, 0.4, 64, [128, 128, 256]) -> SA(group all, [256, 512, 1024])
    -> FC (512, 256, num_classes); nsample as in the authors' release (pointnet2_cls_ssg.py). A sampling level
    runs ``fps`` (npoint of the previous level's points), ``ball_query`` (nsample neighbours within the radius
    of each centroid), ``gather`` of the grouped rows (previous features plus 3 relative-xyz channels), the
    shared MLP on npoint * nsample rows and ``reduce`` (max over nsample). The group-all level needs no
    sampling, query or gather: its rows are the previous level's points themselves, with xyz appended. With
    1024 points and 40 classes this is 1.47 M weights (the published 1.48 M parameters with biases and
    BatchNorm) and 0.84 G MACs per cloud.

    Args:
        num_points: points per cloud, >= 512 (the first level samples 512 centroids).
        num_classes: output classes, >= 1.
        batch: point clouds, >= 1.

    Returns:
        Workload "pointnet2_ssg" of fps, ball_query, gather, linear and reduce records.

    Raises:
        ValueError: a size that is not a positive integer, or num_points < 512.
    """
    _positive(num_points, "num_points")
    _positive(num_classes, "num_classes")
    _positive(batch, "batch")
    levels = ((512, 0.2, 32, (64, 64, 128)), (128, 0.4, 64, (128, 128, 256)))
    if num_points < levels[0][0]:
        raise ValueError(f"num_points must be >= {levels[0][0]} (the first level's centroids), got {num_points}")
    trace = _Trace("pointnet2_ssg", batch)
    points, c = num_points, 0  # xyz only: no input features besides the coordinates
    for i, (npoint, radius, nsample, widths) in enumerate(levels, 1):
        sa = f"sa{i}"
        rows = batch * npoint * nsample
        trace.per_cloud("fps", f"{sa}.fps", sa, n_points=points, n_samples=npoint)
        trace.per_cloud("ball_query", f"{sa}.ball_query", sa, n_query=npoint, n_points=points, radius=radius,
                        k=nsample)
        trace.add("gather", f"{sa}.group", sa, n=rows, c=c + 3)
        c = trace.mlp(f"{sa}.mlp", rows, c + 3, widths)
        trace.add("reduce", f"{sa}.pool", sa, n_in=rows, n_out=batch * npoint, c=c, reduction="max")
        points = npoint
    c = trace.mlp("sa3.mlp", batch * points, c + 3, (256, 512, 1024))
    trace.add("reduce", "sa3.pool", "sa3", n_in=batch * points, n_out=batch, c=c, reduction="max")
    trace.mlp("fc", batch, c, (512, 256, num_classes))
    return trace.workload(num_points=num_points, num_classes=num_classes,
                          source="Qi et al., PointNet++, NeurIPS 2017, supp. Sec. B.1 (SSG classification)")


def dgcnn(num_points: int = 1024, k: int = 20, num_classes: int = 40, batch: int = 1,
          channels: Sequence[int] = (64, 64, 128, 256)) -> Workload:
    """DGCNN classification network (Wang et al., ACM TOG 2019, Sec. 5.1 and Fig. 3; authors' PyTorch release).

    Four EdgeConv layers of widths ``channels``: each runs ``knn`` in the space of its input features (xyz for
    the first), ``gather`` of the k neighbours' features, a shared linear on the n * k edge features
    (x_j - x_i, x_i) of 2C channels, and ``reduce`` (max over k). The four outputs are concatenated
    (512 channels) into a shared linear of 1024, pooled by global max and mean (2048), then FC
    (512, 256, num_classes). No spatial transformer (the paper's classification model and the PyTorch release
    have none; the first TensorFlow release had one, and widths (64, 64, 64, 128), which ``channels`` can
    select). With 1024 points, k = 20 and 40 classes this is 1.80 M weights and 2.39 G MACs per cloud (the
    1.8 M parameters and 2.4 GFLOPs usually quoted).

    Args:
        num_points: points per cloud, >= k.
        k: neighbours per point, >= 1 (20 as published).
        num_classes: output classes, >= 1.
        batch: point clouds, >= 1.
        channels: output widths of the EdgeConv layers, each >= 1.

    Returns:
        Workload "dgcnn" of knn, gather, linear and reduce records.

    Raises:
        ValueError: a size that is not a positive integer, k > num_points, or empty channels.
    """
    _positive(num_points, "num_points")
    _positive(k, "k")
    _positive(num_classes, "num_classes")
    _positive(batch, "batch")
    if k > num_points:
        raise ValueError(f"k must be <= num_points ({num_points}), got {k}")
    channels = tuple(channels)
    if not channels:
        raise ValueError("channels must name at least one EdgeConv width, got ()")
    for width in channels:
        _positive(width, "channels")
    trace = _Trace("dgcnn", batch)
    n = batch * num_points
    c = 3
    for i, width in enumerate(channels, 1):
        layer = f"conv{i}"
        trace.per_cloud("knn", f"{layer}.knn", layer, n_query=num_points, n_points=num_points, k=k, c=c)
        trace.add("gather", f"{layer}.gather", layer, n=n * k, c=c)
        trace.add("linear", f"{layer}.edge", layer, n=n * k, c_in=2 * c, c_out=width)
        trace.add("reduce", f"{layer}.pool", layer, n_in=n * k, n_out=n, c=width, reduction="max")
        c = width
    trace.add("linear", "conv5", "conv5", n=n, c_in=sum(channels), c_out=1024)
    trace.add("reduce", "maxpool", "maxpool", n_in=n, n_out=batch, c=1024, reduction="max")
    trace.add("reduce", "avgpool", "avgpool", n_in=n, n_out=batch, c=1024, reduction="mean")
    trace.add("linear", "linear1", "linear1", n=batch, c_in=2 * 1024, c_out=512)
    trace.add("linear", "linear2", "linear2", n=batch, c_in=512, c_out=256)
    trace.add("linear", "linear3", "linear3", n=batch, c_in=256, c_out=num_classes)
    return trace.workload(num_points=num_points, k=k, num_classes=num_classes, channels=list(channels),
                          source="Wang et al., DGCNN, ACM TOG 2019, Sec. 5.1, Fig. 3")


BUILTIN: types.MappingProxyType[str, Callable[..., Workload]] = types.MappingProxyType(
    {"pointnet": pointnet, "pointnet2_ssg": pointnet2_ssg, "dgcnn": dgcnn}
)


def builtin(name: str, **kwargs) -> Workload:
    """The workload of built-in network `name` (one of `BUILTIN`), generated with `kwargs`.

    Raises:
        ValueError: an unknown name, or invalid sizes.
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in network {name!r}; expected one of {', '.join(BUILTIN)}")
    return BUILTIN[name](**kwargs)
