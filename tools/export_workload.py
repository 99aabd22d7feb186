"""Exports a PointAcc workload trace from one forward pass of a torchsparse model on a real scan.

The scan is voxelised as tools/segment.py does, the model runs once on the CPU through
`torchsparse.nn.workload.trace` (which describes the records), and the trace folder receives trace.jsonl +
maps.npz (see pointacc.workload).

The tool refuses (exit status 2, before any work) to write a trace file onto the scan or the checkpoint, and
writes each trace file atomically.

Usage:
    python tools/export_workload.py [--model NAME] [--input SCAN.bin] [--checkpoint FILE] [--voxel-size 0.05]
        -o TRACE_DIR
"""

from __future__ import annotations

import argparse
import collections
import sys

import torchsparse
from pointacc.workload import ARRAYS, TRACE, write_workload
from torchsparse import models
from torchsparse.assets import sample_scan
from torchsparse.datasets.semantic_kitti import read_scan, voxelize_scan
from torchsparse.nn.workload import trace
from torchsparse.tools._cli import (
    InputFiles,
    existing_file,
    output_folder,
    positive_float,
    refuse_overwrite,
    registered_model,
)
from torchsparse.utils.io import staged_files

SAMPLE = sample_scan()
DEFAULT_MODEL = "SemanticKITTI_val_MinkUNet@114GMACs"


def build_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing (argparse error, exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=registered_model, default=DEFAULT_MODEL,
                        help=f"registered model name (default {DEFAULT_MODEL})")
    parser.add_argument("--input", type=existing_file, default=SAMPLE,
                        help="SemanticKITTI .bin scan (default: the bundled scan)")
    parser.add_argument("--checkpoint", type=existing_file,
                        help="official checkpoint; weights do not change the trace, but SPVNAS needs one")
    parser.add_argument("--voxel-size", type=positive_float, default=0.05,
                        help="voxel edge in metres (default 0.05)")
    parser.add_argument("-o", "--output", type=output_folder, required=True, help="trace folder to write")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = InputFiles()
    inputs.add("the scan", args.input)
    inputs.add("the checkpoint", args.checkpoint)
    refuse_overwrite(parser, "-o/--output", [args.output / TRACE, args.output / ARRAYS], inputs)
    try:
        model = models.get_model(args.model, checkpoint=args.checkpoint).cpu().eval()
    except ValueError as error:
        parser.error(f"argument --checkpoint: {error}")
    try:
        points = read_scan(args.input)
    except ValueError as error:
        parser.error(f"argument --input: {error}")
    x, _, _ = voxelize_scan(points, args.voxel_size)
    ops, arrays = trace(model, x)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    meta = {
        "model": args.model, "input": str(args.input), "checkpoint": checkpoint, "num_points": len(points),
        "num_voxels": int(x.coords.shape[0]),
        "voxel_size": args.voxel_size, "torchsparse_version": torchsparse.__version__,
        "generator": "tools/export_workload.py",
    }
    with staged_files(args.output) as staging:
        write_workload(staging, ops, arrays, meta)
    folder = args.output
    kinds = collections.Counter(op["op"] for op in ops)
    pairs = sum(op["pairs"] for op in ops if op["op"] == "sparse_conv")
    print(f"model: {args.model}; scan: {args.input} ({len(points):,} points -> {meta['num_voxels']:,} voxels)")
    print("ops: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    print(f"pairs: {pairs:,} over {kinds['sparse_conv']} sparse convolutions, "
          f"{sum(op['pairs'] for op in ops if op['op'] == 'kmap'):,} in {kinds['kmap']} distinct maps")
    print(f"trace: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
