"""BEVFusion detection end to end on the CPU: per-module latency and peak memory on one nuScenes-sized sample.

The sample: 6 random normalised images of 256 x 704, a 32-beam-like LiDAR sweep (~35k points, 5 features) and a
nuScenes-like six-camera rig (torchsparse.testing.bevfusion). Random weights: the timings do not depend on them.
`--autocast bfloat16` runs the dense parts under torch.autocast.

Usage:
    python benchmarks/models/bench_bevfusion.py [--runs 3] [--threads 2] [--autocast bfloat16]
"""

import argparse
import contextlib
import resource
import statistics

import torch

from torchsparse.models.bevfusion import BEVFusion
from torchsparse.profiling import named_ms, timed
from torchsparse.testing.benchmark import print_table
from torchsparse.testing.bevfusion import bevfusion_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--autocast", choices=("bfloat16", "float16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BEVFusion("det").eval()
    sample = bevfusion_sample()
    runs = []
    autocast = (torch.autocast("cpu", dtype=getattr(torch, args.autocast)) if args.autocast
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for _ in range(args.runs + 1):  # the first run warms up
            with timed() as times:
                (result,) = model(**sample)
            runs.append(named_ms(times))
    runs = runs[1:]
    rows = [[name, statistics.median(r[name] for r in runs)] for name in runs[0]]
    total = sum(row[1] for row in rows)
    print(f"BEVFusion det, {len(sample['points'][0]):,} points, 6 x 256 x 704 images, {args.threads} threads, "
          f"{args.autocast or 'float32'}: {len(result['boxes'])} boxes")
    print_table(["module", "median ms", "share"], [[n, ms, f"{ms / total:.0%}"] for n, ms in rows] + [["total", total, ""]])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of the process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
