"""Semantic segmentation of one LiDAR scan: the main job.

Runs a SemanticKITTI model (default MinkUNet cr 0.5, the bundled real scan) on a .bin scan or a .pcd/.ply point
cloud (read with open3d), writes per-point predictions as an official .label file (raw SemanticKITTI ids),
prints the latency of each stage and, when labels exist, the official mIoU, and saves a top-down PNG of the
scan coloured by predicted class.

Usage:
    torchsparse-segment [SCAN] [--model NAME] [--checkpoint FILE] [--labels FILE] [-o DIR] [--repeat N]
"""

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
import torchsparse.models as models
from torchsparse.datasets import OFFICIAL, ConfusionMatrix, format_iou_table, get_label_map, iou_official
from torchsparse.datasets.semantic_kitti import read_labels, read_scan, voxelize_scan, write_labels

from torchsparse import SparseTensor

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "semantickitti" / "000000.bin"
DEFAULT_MODEL = "SemanticKITTI_val_MinkUNet@29GMACs"


def read_points(path: pathlib.Path) -> np.ndarray:
    """float32 (N, 4) x, y, z, intensity from a SemanticKITTI .bin, or a .pcd/.ply (intensity 0) via open3d."""
    if path.suffix == ".bin":
        return read_scan(path)
    if path.suffix not in (".pcd", ".ply"):
        raise ValueError(f"{path}: unsupported point-cloud format {path.suffix!r}; use .bin, .pcd or .ply")
    try:
        import open3d
    except ImportError:
        raise ValueError(f"reading {path.suffix} files needs open3d: pip install open3d-cpu") from None
    cloud = open3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points, dtype=np.float32)
    if len(xyz) == 0:
        raise ValueError(f"{path}: no points read (missing, empty or corrupt file)")
    return np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], 1)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2: the profiler's C++ backend prints start/stop banners there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def kernel_map_ms(model: torch.nn.Module, x: SparseTensor) -> float:
    """Wall time of building kernel maps and point-voxel queries in one forward pass, in ms.

    A separate pass under torch.profiler, on a fresh tensor so that nothing is cached, sums the named
    "torchsparse.kernel_map" ranges. The network time is measured without the profiler, whose per-op overhead
    would inflate the many small GEMMs of the convolutions.
    """
    fresh = SparseTensor(x.feats, x.coords, x.stride, x.spatial_range)
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(fresh)
    return sum(e.cpu_time_total for e in profile.events() if e.name == "torchsparse.kernel_map") / 1e3


def render(points: np.ndarray, panels: list[tuple[str, np.ndarray]], label_map, path: pathlib.Path) -> None:
    """Top-down (x, y) views of the scan, one per (title, int64 (N,) classes) panel, coloured by class with
    the official colour map and a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = (
        np.concatenate([label_map.colors_rgb(), [[90, 90, 90]]]).astype(np.float64) / 255
    )  # grey: ignored
    fig, axes = plt.subplots(1, len(panels), figsize=(9 * len(panels), 9), facecolor="black", squeeze=False)
    for ax, (title, classes) in zip(axes[0], panels):
        rows = np.where(classes == label_map.ignore_index, len(colors) - 1, classes)
        ax.scatter(points[:, 0], points[:, 1], c=colors[rows], s=0.15, linewidths=0)
        ax.set_aspect("equal")
        ax.set_facecolor("black")
        ax.axis("off")
        present = [c for c in np.unique(classes) if c != label_map.ignore_index]
        handles = [Patch(color=colors[c], label=label_map.class_names[c]) for c in present]
        ax.legend(
            handles=handles, loc="lower left", fontsize=8, ncol=2, facecolor="black", labelcolor="white"
        )
        ax.set_title(title, color="white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight", facecolor="black")
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scan",
        nargs="?",
        type=pathlib.Path,
        default=SAMPLE,
        help="a .bin, .pcd or .ply (default: bundled scan)",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--checkpoint",
        type=pathlib.Path,
        help="official checkpoint ('init' file); without it weights are random",
    )
    parser.add_argument(
        "--labels", type=pathlib.Path, help="ground-truth .label (default: next to the scan, or ../labels/)"
    )
    parser.add_argument(
        "--label-map",
        default="spvnas",
        help="class order the model predicts: spvnas (official checkpoints) or official",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=pathlib.Path,
        default=pathlib.Path("outputs"),
        help="output folder (default ./outputs)",
    )
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=1, help="forward passes to time; the median is printed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def find_labels(scan: pathlib.Path) -> pathlib.Path | None:
    for candidate in (scan.with_suffix(".label"), scan.parent.parent / "labels" / f"{scan.stem}.label"):
        if candidate.is_file():
            return candidate
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    if not args.scan.is_file():
        raise SystemExit(f"scan {args.scan} does not exist")
    label_map = get_label_map(args.label_map)
    device = torch.device(args.device)

    model = models.get_model(args.model, checkpoint=args.checkpoint).to(device).eval()
    weights = f"weights from {args.checkpoint}" if args.checkpoint else "RANDOM weights"
    print(
        f"model: {args.model} ({type(model).__name__}, {models.num_parameters(model) / 1e6:.2f} M parameters, {weights})"
    )
    if args.checkpoint is None:
        print(
            "WARNING: no --checkpoint given: the network is randomly initialised, so its predictions and mIoU "
            "are meaningless; pass an official checkpoint for real results",
            file=sys.stderr,
        )

    times: dict[str, list[float]] = {
        "read + voxelize": [],
        "kernel maps": [],
        "network": [],
        "devoxelize": [],
    }
    for _ in range(args.repeat):
        start = time.perf_counter()
        points = read_points(args.scan)
        x, _, inverse = voxelize_scan(points, args.voxel_size)
        x = x.to(device)
        voxelized = time.perf_counter()
        with torch.inference_mode():
            logits = model(x)
            voxel_classes = logits.argmax(1).cpu()
            ran = time.perf_counter()
            point_classes = voxel_classes[inverse].numpy()
            done = time.perf_counter()
            maps = kernel_map_ms(model, x)
        times["read + voxelize"].append((voxelized - start) * 1e3)
        times["kernel maps"].append(maps)
        times["network"].append((ran - voxelized) * 1e3 - maps)
        times["devoxelize"].append((done - ran) * 1e3)

    print(f"scan: {args.scan} ({len(points):,} points -> {len(x):,} voxels at {args.voxel_size} m)")
    print(f"latency on {device} with {torch.get_num_threads()} threads, median of {args.repeat} run(s):")
    for stage, values in times.items():
        print(f"  {stage:<16}{statistics.median(values):9.1f} ms")
    total = [sum(v[i] for v in times.values()) for i in range(args.repeat)]
    print(f"  {'total':<16}{statistics.median(total):9.1f} ms")

    raw = label_map.to_raw(point_classes)
    args.output.mkdir(parents=True, exist_ok=True)
    label_path = args.output / f"{args.scan.stem}.label"
    write_labels(label_path, raw)
    print(f"predictions: {label_path} (raw SemanticKITTI ids, official .label format)")

    panels = [(f"prediction: {args.model} ({weights})", point_classes)]
    labels_path = args.labels or (find_labels(args.scan) if args.scan.suffix == ".bin" else None)
    if labels_path is not None:
        semantic, _ = read_labels(labels_path, num_points=len(points))
        matrix = ConfusionMatrix(OFFICIAL.num_classes)
        matrix.update(OFFICIAL.to_classes(raw), OFFICIAL.to_classes(semantic))
        print(f"ground truth: {labels_path}")
        print(format_iou_table(iou_official(matrix.matrix)))
        panels.append(("ground truth", label_map.to_classes(semantic)))

    image_path = args.output / f"{args.scan.stem}.png"
    render(points, panels, label_map, image_path)
    print(f"image: {image_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
