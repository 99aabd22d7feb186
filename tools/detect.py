"""3D detection on one nuScenes sample with BEVFusion (camera + LiDAR).

Runs BEVFusion("det") on one key frame of a nuScenes root (default: the synthetic set, written on first use into
the cache folder, see `torchsparse.datasets.synthetic_nuscenes.cached_synthetic_nuscenes`), writes the sample's boxes in the nuscenes-devkit results
format (``results.json``: global frame, nuScenes yaw, attributes by the velocity rule) and a bird's-eye PNG with
the LiDAR points, the predicted boxes and the ground-truth boxes, and prints the latency of every module.

``--version`` may name any table folder: an official version defaults ``--split`` to mini_val / val / test, any
other (a custom database) to every scene. BEVFusion needs the six cameras, so a LiDAR-only database is refused
(exit status 2) before any work.

Without ``--checkpoint`` the network is randomly initialised (seeded) and says so loudly: its boxes are noise.
The tool refuses (exit status 2, before any work) to write onto a file it reads (a table or a file of the
sample, the checkpoint), and writes each output atomically.

Usage:
    torchsparse-detect [--root ROOT] [--version v1.0-mini] [--split mini_val] [--index 0 | --sample TOKEN]
                       [--checkpoint FILE] [--sweeps 0] [-o DIR] [--repeat N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from torchsparse.datasets.nuscenes import (
    DETECTION_CLASSES,
    MODEL_INPUTS,
    RESULTS_META,
    collate_nuscenes,
    detection_results,
)
from torchsparse.nn import fuse
from torchsparse.profiling import named_ms, timed
from torchsparse.tools._cli import InputFiles, finite_float, output_folder, positive_int, refuse_overwrite
from torchsparse.tools._nuscenes_cli import (
    RANDOM_WEIGHTS_WARNING,
    add_model_arguments,
    build_detector,
    chosen_split,
    open_dataset,
)
from torchsparse.utils.io import atomic_open, atomic_path


def box_corners_bev(boxes: np.ndarray) -> np.ndarray:
    """(M, 4, 2) float64 bird's-eye corners of BEVFusion LiDAR boxes (M, >= 7): the box's length l lies along
    the nuScenes heading -yaw - pi / 2, its width w across it."""
    boxes = np.asarray(boxes, dtype=np.float64)
    heading = -boxes[:, 6] - math.pi / 2
    along = np.stack([np.cos(heading), np.sin(heading)], 1) * boxes[:, 4:5] / 2
    across = np.stack([-np.sin(heading), np.cos(heading)], 1) * boxes[:, 3:4] / 2
    signs = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64)
    return boxes[:, None, :2] + signs[None, :, :1] * along[:, None] + signs[None, :, 1:] * across[:, None]


def draw_bev(
    path: pathlib.Path,
    points: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    gt_boxes: np.ndarray,
    score_threshold: float,
    extent: float = 54.0,
) -> None:
    """Top-down PNG: points coloured by height, ground truth in black, predictions with score >= threshold in
    their class colour (heading marked by a line from the centre to the front edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 9), dpi=110)
    keep = (np.abs(points[:, 0]) <= extent) & (np.abs(points[:, 1]) <= extent)
    ax.scatter(points[keep, 0], points[keep, 1], s=0.2, c=points[keep, 2], cmap="viridis", vmin=-2, vmax=3,
               linewidths=0)
    colours = plt.get_cmap("tab10")

    def outline(box_set, colour, width, style):
        for box, corners in zip(box_set, box_corners_bev(box_set), strict=True):
            ring = np.concatenate([corners, corners[:1]])
            ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=width, ls=style)
            front = corners[:2].mean(0)
            ax.plot([box[0], front[0]], [box[1], front[1]], color=colour, lw=width, ls=style)

    outline(gt_boxes, "black", 1.6, "-")
    shown = scores >= score_threshold
    for k, name in enumerate(DETECTION_CLASSES):
        chosen = shown & (labels == k)
        if chosen.any():
            outline(boxes[chosen], colours(k), 1.0, "--")
            ax.plot([], [], color=colours(k), ls="--", label=f"{name} ({int(chosen.sum())})")
    if len(gt_boxes):
        ax.plot([], [], color="black", label=f"ground truth ({len(gt_boxes)})")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, LiDAR frame)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"BEVFusion: {int(shown.sum())} boxes with score >= {score_threshold:g}")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing (argparse error, exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="sample index within the split (default 0)")
    which.add_argument("--sample", help="sample token (overrides --index)")
    parser.add_argument("-o", "--output", type=output_folder, default=pathlib.Path("detect_output"),
                        help="folder for results.json and bev.png (default %(default)s)")
    parser.add_argument("--score-threshold", type=finite_float, default=0.1,
                        help="boxes drawn in the PNG (default 0.1)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="run the LiDAR encoder without torchsparse.nn.fuse (BatchNorm folding, fused epilogues)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="timed forward passes; medians are printed")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset = open_dataset(args, parser)
    if args.sample is not None:
        if args.sample not in dataset.sample_tokens:
            split = chosen_split(args)
            raise SystemExit(f"sample {args.sample!r} is not in {'split ' + split if split else 'the database'}")
        index = dataset.sample_tokens.index(args.sample)
    else:
        index = args.index
        if not -len(dataset) <= index < len(dataset):
            raise SystemExit(f"--index {index} is out of range: the split has {len(dataset)} samples")
    results_path, png = args.output / "results.json", args.output / "bev.png"
    inputs = InputFiles()
    inputs.add_all("a dataset file", dataset.input_files([index]))
    inputs.add("the checkpoint", args.checkpoint)
    refuse_overwrite(parser, "-o/--output", [results_path, png], inputs)
    batch = collate_nuscenes([dataset[index]])
    load_ms = (time.perf_counter() - start) * 1e3
    model = build_detector(args.checkpoint, args.seed, parser=parser)
    if not args.no_fuse:
        lidar = model.encoders["lidar"]
        lidar["backbone"] = fuse(lidar["backbone"])

    runs = []
    with torch.inference_mode():
        for _ in range(args.repeat):
            start = time.perf_counter()
            with timed() as times:
                (result,) = model(**{k: batch[k] for k in MODEL_INPUTS})
            runs.append({**named_ms(times), "total": (time.perf_counter() - start) * 1e3})

    token = batch["sample_token"][0]
    boxes, scores, labels = (result[k].double().numpy() for k in ("boxes", "scores", "labels"))
    labels = labels.astype(np.int64)
    records = detection_results(token, boxes, scores, labels, batch["lidar2ego"][0], batch["ego2global"][0])
    with atomic_open(results_path) as handle:
        json.dump({"meta": RESULTS_META, "results": {token: records}}, handle, indent=1)
    draw_bev(png, batch["points"][0].numpy(), boxes, scores, labels, batch["gt_boxes"][0].double().numpy(),
             args.score_threshold)

    print(f"sample {token} ({dataset.root}, {len(batch['points'][0]):,} points, {len(batch['gt_boxes'][0])} "
          f"ground-truth boxes)")
    print(f"latency in ms (median of {args.repeat}, {torch.get_num_threads()} threads; data loading {load_ms:.0f}):")
    for name in runs[0]:
        print(f"  {name:<20s} {statistics.median(r[name] for r in runs):9.1f}")
    top = np.argsort(-scores, kind="stable")[:5]
    print(f"{len(records)} boxes; {int((scores >= args.score_threshold).sum())} with score >= "
          f"{args.score_threshold:g}; best:")
    for i in top:
        x, y, z, w, l, h = boxes[i, :6]
        print(f"  {DETECTION_CLASSES[labels[i]]:<21s} score {scores[i]:.3f}  centre ({x:6.1f}, {y:6.1f}, "
              f"{z + h / 2:5.1f}) m  size {w:.1f} x {l:.1f} x {h:.1f}")
    print(f"results: {results_path}\nbird's-eye view: {png}")
    if args.checkpoint is None:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
