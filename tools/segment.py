"""Semantic segmentation of one LiDAR scan: the main job.

Runs a SemanticKITTI model (default MinkUNet cr 0.5, the bundled real scan) on a .bin scan or a .pcd/.ply point
cloud (read with open3d), writes per-point predictions as an official .label file (raw SemanticKITTI ids),
prints the latency of each stage and, when labels exist, the official mIoU, and saves a top-down PNG of the
scan coloured by predicted class.

The output folder may hold the inputs, but the tool refuses (exit status 2) to write a file that it reads:
``torchsparse-segment d/scan.bin -o d`` stops before any work when ``d/scan.label`` is the ground truth.
Both outputs are written atomically (a complete new file or the previous one, never a partial one).

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

from torchsparse import SparseTensor, models
from torchsparse.assets import sample_scan
from torchsparse.datasets import OFFICIAL, ConfusionMatrix, format_iou_table, get_label_map, iou_official
from torchsparse.datasets.point_clouds import read_points
from torchsparse.datasets.semantic_kitti import read_labels, voxelize_scan, write_labels
from torchsparse.nn import fuse
from torchsparse.tools._cli import (
    InputFiles,
    device,
    existing_file,
    output_folder,
    positive_float,
    positive_int,
    refuse_overwrite,
    registered_model,
)
from torchsparse.utils.io import atomic_path

SAMPLE = sample_scan()
DEFAULT_MODEL = "SemanticKITTI_val_MinkUNet@29GMACs"


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
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, bbox_inches="tight", facecolor="black")
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing (argparse error, exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scan",
        nargs="?",
        type=existing_file,
        default=SAMPLE,
        help="a .bin, .pcd or .ply (default: bundled scan)",
    )
    parser.add_argument(
        "--model",
        type=registered_model,
        default=DEFAULT_MODEL,
        help=f"registered model name (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--checkpoint",
        type=existing_file,
        help="official checkpoint ('init' file); without it weights are random",
    )
    parser.add_argument(
        "--labels", type=existing_file, help="ground-truth .label (default: next to the scan, or ../labels/)"
    )
    parser.add_argument(
        "--label-map",
        default="spvnas",
        type=str.lower,
        choices=("spvnas", "official"),
        help="class order the model predicts: spvnas (official checkpoints) or official",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=output_folder,
        default=pathlib.Path("outputs"),
        help="output folder (default ./outputs)",
    )
    parser.add_argument("--voxel-size", type=positive_float, default=0.05, help="voxel edge in metres")
    parser.add_argument(
        "--repeat", type=positive_int, default=1, help="forward passes to time; the median is printed"
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--no-fuse", action="store_true",
        help="run the model as built, without torchsparse.nn.fuse (BatchNorm folding, fused ReLU / residual epilogues)",
    )
    parser.add_argument(
        "--device", type=device, default=torch.device("cpu"), help="cpu (default) or cuda[:N]"
    )
    return parser


def find_labels(scan: pathlib.Path) -> pathlib.Path | None:
    """The scan's ground truth by the SemanticKITTI layout: ``scan.label`` beside it, else ``../labels/``."""
    for candidate in (scan.with_suffix(".label"), scan.parent.parent / "labels" / f"{scan.stem}.label"):
        if candidate.is_file():
            return candidate
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Found before anything is written, so that predictions are never read back as the ground truth.
    labels_path = args.labels or (find_labels(args.scan) if args.scan.suffix == ".bin" else None)
    label_path = args.output / f"{args.scan.stem}.label"
    image_path = args.output / f"{args.scan.stem}.png"
    inputs = InputFiles()
    inputs.add("the scan", args.scan)
    inputs.add("the ground-truth labels", labels_path)
    inputs.add("the checkpoint", args.checkpoint)
    refuse_overwrite(parser, "-o/--output", [label_path, image_path], inputs)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    label_map = get_label_map(args.label_map)
    device = args.device

    try:
        model = models.get_model(args.model, checkpoint=args.checkpoint).to(device).eval()
    except ValueError as error:
        parser.error(f"argument --checkpoint: {error}")
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
    if not args.no_fuse:
        model = fuse(model)  # BatchNorm folded, ReLU and residual additions in the convolutions' epilogues

    times: dict[str, list[float]] = {
        "read + voxelize": [],
        "kernel maps": [],
        "network": [],
        "devoxelize": [],
    }
    for _ in range(args.repeat):
        start = time.perf_counter()
        try:
            points = read_points(args.scan)
        except ValueError as error:
            parser.error(f"argument scan: {error}")
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

    semantic = None
    if labels_path is not None:
        try:
            semantic, _ = read_labels(labels_path, num_points=len(points))
        except ValueError as error:
            source = "argument --labels" if args.labels else "the ground-truth labels found beside the scan"
            parser.error(f"{source}: {error}")

    raw = label_map.to_raw(point_classes)
    with atomic_path(label_path) as tmp:
        write_labels(tmp, raw)
    print(f"predictions: {label_path} (raw SemanticKITTI ids, official .label format)")

    panels = [(f"prediction: {args.model} ({weights})", point_classes)]
    if semantic is not None:
        matrix = ConfusionMatrix(OFFICIAL.num_classes)
        matrix.update(OFFICIAL.to_classes(raw), OFFICIAL.to_classes(semantic))
        print(f"ground truth: {labels_path}")
        print(format_iou_table(iou_official(matrix.matrix)))
        panels.append(("ground truth", label_map.to_classes(semantic)))

    render(points, panels, label_map, image_path)
    print(f"image: {image_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
