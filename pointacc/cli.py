"""Command line: `pointacc run | sweep | explain` (also `python -m pointacc`).

    pointacc run -c CFG -t TRACE -p OUTDIR [-i gemm|trace] [--fidelity analytic|trace]
    pointacc sweep -c CFG -t TRACE -o sweep.csv --set memory.cache_kb=64,128,256 --set memory.gather_order=output,offset
    pointacc explain -c CFG -t TRACE --layer NAME

CFG is an INI file or a preset name (pointacc, pointacc_edge); TRACE a trace folder, a .jsonl file, a SCALE-Sim
GEMM topology .csv (-i gemm) or builtin:NAME (pointnet, pointnet2_ssg, dgcnn).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import sys

from pointacc.config import ConfigError, load_config
from pointacc.simulate import UNITS, cost_of, simulate
from pointacc.workload import Workload, WorkloadError, load_workload


def _workload(spec: str, interface: str) -> Workload:
    if spec.startswith("builtin:"):
        from pointacc.networks import builtin

        return builtin(spec.split(":", 1)[1])
    path = pathlib.Path(spec)
    if interface == "gemm" and path.suffix != ".csv":
        raise WorkloadError(f"-i gemm expects a SCALE-Sim topology .csv, got {spec}")
    return load_workload(path)


def _progress(iterable, total):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="layers", unit="op", leave=False)


def run(args) -> int:
    from pointacc.report import write_reports

    config = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    sim = simulate(config, workload, args.fidelity, progress=_progress)
    summary = write_reports(sim, args.path, chart=not args.no_chart)
    energy = summary["energy_pj"]
    print(
        f"{workload.name} on {config.run_name} ({summary['fidelity']} fidelity): {summary['total_cycles']:,} "
        f"cycles = {summary['latency_ms']:.3f} ms at {config.array.clock_ghz} GHz"
    )
    print(
        f"  energy {energy['total'] / 1e6:.1f} µJ ("
        + ", ".join(f"{u} {energy[u] / energy['total'] * 100 if energy['total'] else 0:.0f}%" for u in UNITS)
        + ")"
    )
    print(
        f"  DRAM {(summary['dram_read_bytes'] + summary['dram_write_bytes']) / 2**20:.1f} MiB; time in "
        + ", ".join(f"{k} {v * 100:.0f}%" for k, v in summary["work_share"].items())
    )
    print(f"  reports in {args.path}")
    return 0


def _parse_sets(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--set expects key=v1,v2,..., got {item!r}")
        grid[key] = values.split(",")
    return grid


def sweep(args) -> int:
    base = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    grid = _parse_sets(args.set)
    keys = list(grid)
    rows = []
    for values in itertools.product(*grid.values()):
        config = base.replace(**dict(zip(keys, values)))
        summary = simulate(config, workload, args.fidelity).summary()
        rows.append(
            [
                *values,
                summary["total_cycles"],
                summary["latency_ms"],
                summary["dram_read_bytes"] + summary["dram_write_bytes"],
                summary["energy_pj"]["total"],
            ]
        )
        print(", ".join(f"{k}={v}" for k, v in zip(keys, values)), f"-> {summary['total_cycles']:,} cycles")
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*keys, "total_cycles", "latency_ms", "dram_bytes", "energy_pj"])
        writer.writerows(rows)
    print(f"{len(rows)} configurations -> {out}")
    return 0


def explain(args) -> int:
    config = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    names = [op["name"] for op in workload.ops]
    if args.layer not in names:
        raise WorkloadError(f"no layer {args.layer!r} in {workload.name}; layers: {', '.join(names[:20])}...")
    index = names.index(args.layer)
    op = workload.ops[index]
    costs = cost_of(config, workload, op, index, args.fidelity or config.run.fidelity)
    print(
        f"{op['name']} ({op['op']}): " + json.dumps({k: v for k, v in op.items() if k not in ("op", "name")})
    )
    for unit, cost in costs.items():
        print(
            f"  {unit}: {cost.cycles:,} cycles, DRAM read {cost.dram_read_bytes:,} B, write {cost.dram_write_bytes:,} B"
        )
        for key, value in cost.detail.items():
            print(f"    {key} = {value}")
        if cost.actions:
            print("    actions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(cost.actions.items())))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pointacc", description="PointAcc accelerator simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "simulate a workload"),
        ("sweep", "grid over config keys"),
        ("explain", "formula breakdown of one layer"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", required=True, help="INI file or preset name")
        sub.add_argument("-t", "--topology", required=True, help="trace folder, .jsonl, .csv or builtin:NAME")
        sub.add_argument("-i", "--interface", choices=("trace", "gemm"), default="trace")
        sub.add_argument("--fidelity", choices=("analytic", "trace"))
        if name == "run":
            sub.add_argument("-p", "--path", required=True, help="output folder for the reports")
            sub.add_argument("--no-chart", action="store_true")
        elif name == "sweep":
            sub.add_argument("--set", action="append", required=True, help="key=v1,v2,... (repeatable)")
            sub.add_argument("-o", "--output", required=True, help="CSV file")
        else:
            sub.add_argument("--layer", required=True)
    args = parser.parse_args(argv)
    try:
        return {"run": run, "sweep": sweep, "explain": explain}[args.command](args)
    except (ConfigError, WorkloadError) as error:
        print(f"pointacc: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
