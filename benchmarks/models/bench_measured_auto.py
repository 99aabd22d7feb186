"""What the measured automatic dataflow costs and gains: MinkUNet on the real scan, `dataflow="auto"` with
`measure=True` (each layer group times the candidates on its first inference call) against `measure=False` (the
rule alone), same weights.

Prints the first forward of each (the measured one includes the measuring) and the steady state (medians of
interleaved rounds), which dataflow each layer kept, and the largest output difference.

Usage:
    python benchmarks/models/bench_measured_auto.py [--cr 0.5] [--threads 2] [--runs 3]
"""

import argparse
import collections
import time

import numpy as np
import torch

import torchsparse
from torchsparse import SparseTensor
from torchsparse.assets import sample_scan
from torchsparse.models import MinkUNet
from torchsparse.testing import quantize_scan
from torchsparse.testing.benchmark import interleaved_medians_ms, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cr", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scan = quantize_scan(np.fromfile(sample_scan(), dtype=np.float32).reshape(-1, 4))
    static, measured = MinkUNet(cr=args.cr).eval(), MinkUNet(cr=args.cr).eval()
    measured.load_state_dict(static.state_dict())

    def forward(net, measure: bool):
        def run():
            with torchsparse.config(measure=measure):
                return net(SparseTensor(scan.feats, scan.coords))

        return run

    with torch.inference_mode():
        forward(static, False)()  # warm the allocator and caches once
        first = {}
        for name, run in (("measure=False", forward(static, False)), ("measure=True", forward(measured, True))):
            start = time.perf_counter()
            run()
            first[name] = (time.perf_counter() - start) * 1e3
        steady = interleaved_medians_ms(
            {"measure=False": forward(static, False), "measure=True": forward(measured, True)}, args.runs, warmup=0
        )
        difference = float((forward(static, False)() - forward(measured, True)()).abs().max())
    kept = collections.Counter(
        choice.dataflow for module in measured.modules() for choice in getattr(module, "choices", {}).values()
    )
    print(f"MinkUNet cr={args.cr}, {len(scan)} voxels, {args.threads} threads; layers kept: {dict(kept)}; "
          f"max |output difference| {difference:.1e}")
    print_table(["auto", "first forward ms", "steady ms (median)"], [[n, first[n], steady[n]] for n in first])


if __name__ == "__main__":
    main()
