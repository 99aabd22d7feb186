"""Write a small synthetic nuScenes set in the official on-disk format, deterministically from a seed.

The command line of `torchsparse.datasets.synthetic_nuscenes` (its docstring describes the files, names and
geometry). Refuses (exit status 2) a root whose table folder holds a set that this tool did not write, so a real
nuScenes release is never overwritten.

Usage:
    python -m torchsparse.tools.make_synthetic_nuscenes -o ROOT [--scenes 2] [--samples 3] [--seed 0] [--sweeps 2]
        [--version v1.0-mini] [--scene-names NAME ...] [--split-names mini_train mini_val] [--lidar-only]
"""

from __future__ import annotations

import argparse

from torchsparse.datasets.nuscenes import VERSION
from torchsparse.datasets.synthetic_nuscenes import (
    MINI_TRAIN,
    MINI_VAL,
    check_name,
    is_synthetic,
    make_synthetic_nuscenes,
)
from torchsparse.tools._cli import int_in_range, non_negative_int, output_folder, positive_int


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=output_folder, required=True, help="dataset root to write")
    parser.add_argument("--scenes", type=positive_int,
                        help="scene count (default 2, or the number of --scene-names); at most 10 with the "
                             "official v1.0-mini names")
    parser.add_argument("--samples", type=positive_int, default=3, help="key frames per scene")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--sweeps", type=int_in_range(0, 9), default=2,
                        help="LiDAR sweeps between consecutive key frames")
    parser.add_argument("--version", default=VERSION, help="table folder name (default %(default)s)")
    parser.add_argument("--scene-names", nargs="+", metavar="NAME",
                        help="scene names (default: the official v1.0-mini names)")
    parser.add_argument("--split-names", nargs=2, metavar=("TRAIN", "VAL"), default=("mini_train", "mini_val"),
                        help="split names written to splits.json (default: mini_train mini_val)")
    parser.add_argument("--lidar-only", action="store_true", help="no cameras: no camera records or images")
    args = parser.parse_args(argv)
    if args.scenes is None:
        args.scenes = len(args.scene_names) if args.scene_names else 2
    if args.scene_names is None and args.scenes > len(MINI_TRAIN) + len(MINI_VAL):
        parser.error(f"argument --scenes: at most {len(MINI_TRAIN) + len(MINI_VAL)} with the official scene names, "
                     f"got {args.scenes}; name more with --scene-names")
    if args.scene_names is not None and len(args.scene_names) != args.scenes:
        parser.error(f"argument --scene-names: {len(args.scene_names)} names for --scenes {args.scenes}")
    for option, values in (("--version", [args.version]), ("--scene-names", args.scene_names or []),
                           ("--split-names", args.split_names)):
        try:
            for value in values:
                check_name(value, "the name")
        except ValueError as error:
            parser.error(f"argument {option}: {error}")
    if len(set(args.scene_names or [])) != len(args.scene_names or []):
        parser.error("argument --scene-names: the names must be distinct")
    if args.split_names[0] == args.split_names[1]:
        parser.error("argument --split-names: the two names must differ")
    if (args.output / args.version).exists() and not is_synthetic(args.output, args.version):
        parser.error(
            f"argument -o/--output: {args.output / args.version} holds tables that this tool did not write; "
            "refusing to overwrite them"
        )
    root = make_synthetic_nuscenes(
        args.output, args.scenes, args.samples, args.seed, args.sweeps, version=args.version,
        scene_names=args.scene_names, split_names=tuple(args.split_names), cameras=not args.lidar_only,
    )
    print(f"wrote {args.scenes} scenes x {args.samples} samples to {root / args.version}"
          f"{' (LiDAR only)' if args.lidar_only else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
