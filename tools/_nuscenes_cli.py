"""Options and helpers shared by the nuScenes command lines (detect.py, evaluate_nuscenes.py): which database,
split and weights, opened through the library (`torchsparse.datasets.nuscenes`, `torchsparse.models`)."""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from torchsparse.datasets.nuscenes import VERSION, NuScenes, default_split
from torchsparse.datasets.synthetic_nuscenes import cached_synthetic_nuscenes
from torchsparse.models import get_model
from torchsparse.tools._cli import (
    existing_file,
    existing_folder,
    int_in_range,
    non_negative_int,
    positive_int,
)

RANDOM_WEIGHTS_WARNING = (
    "WARNING: no --checkpoint given: BEVFusion is RANDOMLY INITIALISED, so its boxes and scores are meaningless. "
    "Pass --checkpoint (an official BEVFusion detection .pth converted by tools/convert_bevfusion_checkpoint.py) "
    "for real detections."
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and model options shared by detect.py and evaluate_nuscenes.py."""
    parser.add_argument("--root", type=existing_folder,
                        help="nuScenes root (default: the cached synthetic set)")
    parser.add_argument("--version", default=VERSION, help="table folder (default %(default)s)")
    parser.add_argument("--split", help="split name: a devkit split or one of <root>/<version>/splits.json "
                                        "(default: mini_val / val / test for the official versions)")
    parser.add_argument("--checkpoint", type=existing_file,
                        help="BEVFusion weights (random without; says so)")
    parser.add_argument("--sweeps", type=non_negative_int, default=9,
                        help="previous LiDAR sweeps merged (default %(default)s)")
    parser.add_argument("--seed", type=int_in_range(-(2**63), 2**64 - 1), default=0,
                        help="random initialisation seed without --checkpoint")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")


def dataset_root(args: argparse.Namespace) -> pathlib.Path:
    """--root, or the cached synthetic set (written on first use)."""
    return args.root if args.root is not None else cached_synthetic_nuscenes()


def chosen_split(args: argparse.Namespace) -> str | None:
    """--split, else the official version's evaluation split (`default_split`), else None (every scene)."""
    if args.split is not None:
        return args.split
    try:
        return default_split(args.version)
    except ValueError:
        return None


def open_dataset(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None,
                 split: str | None = None) -> NuScenes:
    """The split the options name (see `add_model_arguments`; ``split`` overrides `chosen_split`) with the
    six cameras BEVFusion needs.

    Raises:
        ValueError: a missing table, version or split, or a database without cameras; with ``parser``, its
            error (exit status 2) instead.
    """
    try:
        split = split if split is not None else chosen_split(args)
        dataset = NuScenes(dataset_root(args), version=args.version, split=split, sweeps=args.sweeps)
        if not dataset.has_cameras:
            raise ValueError(
                f"{dataset.root / dataset.version} has no camera sensors (a LiDAR-only database), and "
                "BEVFusion needs the six cameras"
            )
        return dataset
    except ValueError as error:
        if parser is None:
            raise
        parser.error(f"argument --root/--version/--split: {error}")


def build_detector(checkpoint: pathlib.Path | None, seed: int = 0, loud: bool = True,
                   parser: argparse.ArgumentParser | None = None) -> torch.nn.Module:
    """BEVFusion("det") in eval mode with ``checkpoint`` loaded, or seeded random weights (warned on stderr).

    Raises:
        ValueError: an unreadable checkpoint or one that does not fit; with ``parser``, its error instead.
    """
    torch.manual_seed(seed)
    try:
        model = get_model("bevfusion_det", checkpoint=checkpoint).eval()
    except ValueError as error:
        if parser is None:
            raise
        parser.error(f"argument --checkpoint: {error}")
    if checkpoint is None and loud:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    return model
