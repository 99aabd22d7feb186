"""Simulator speed and headline results on the real MinkUNet trace of the bundled SemanticKITTI scan.

Traces the model with torchsparse.nn.workload.trace as tools/export_workload.py does (MinkUNet cr 1.0 by
default), then times `pointacc.simulate` at trace fidelity (the cache simulated over every gathered row, the
merges counted on the real coordinates) and analytic fidelity, and prints the ablations: gather order, caching, configurable caching, fusion, overlap.

Usage:
    python benchmarks/pointacc/bench_simulator.py [--model SemanticKITTI_val_MinkUNet@114GMACs] [--config pointacc]
"""

import argparse
import statistics
import tempfile
import time

from pointacc.config import load_config
from pointacc.simulate import simulate
from pointacc.workload import load_workload, write_workload
from torchsparse import models
from torchsparse.assets import sample_scan
from torchsparse.datasets import read_scan, voxelize_scan
from torchsparse.nn.workload import trace
from torchsparse.testing.benchmark import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SemanticKITTI_val_MinkUNet@114GMACs")
    parser.add_argument("--config", default="pointacc")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    x, _, _ = voxelize_scan(read_scan(sample_scan()), 0.05)  # as tools/export_workload.py does by default
    ops, arrays = trace(models.get_model(args.model).eval(), x)
    with tempfile.TemporaryDirectory() as folder:
        write_workload(folder, ops, arrays, {"model": args.model, "input": str(sample_scan())})
        workload = load_workload(folder)
    config = load_config(args.config)
    pairs = sum(int(workload.pairs(op["map"])[2].sum()) for op in workload.ops if op["op"] == "sparse_conv")
    for fidelity in ("trace", "analytic"):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            simulate(config, workload, fidelity)
            times.append(time.perf_counter() - start)
        print(
            f"{fidelity} fidelity: {statistics.median(times):.2f} s (median of {args.runs}) for "
            f"{len(workload.ops)} ops, {pairs:,} gathered rows"
        )
    variants = {
        "baseline (preset)": {},
        "offset-major gather": {"memory.gather_order": "offset"},
        "no caching": {"memory.caching": False},
        "fixed line size": {"memory.reconfigure": False},
        "no fusion": {"memory.fusion": False},
        "no overlap": {"run.overlap": False},
    }
    rows = []
    base = None
    for name, changes in variants.items():
        summary = simulate(config.replace(**changes) if changes else config, workload).summary()
        dram = (summary["dram_read_bytes"] + summary["dram_write_bytes"]) / 2**20
        energy = summary["energy_pj"]["total"] / 1e6
        base = base or (summary["total_cycles"], dram, energy)
        share = summary["work_share"]
        rows.append(
            [
                name,
                summary["latency_ms"],
                summary["total_cycles"] / base[0],
                dram,
                dram / base[1],
                energy,
                energy / base[2],
                f"{share['mapping']:.0%} / {share['data movement']:.0%} / {share['MACs']:.0%}",
            ]
        )
    print(f"\n{args.model} on {config.run_name}")
    print_table(
        [
            "variant",
            "latency ms",
            "x cycles",
            "DRAM MiB",
            "x DRAM",
            "energy µJ",
            "x energy",
            "mapping / data movement / MACs",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
