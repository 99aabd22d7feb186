"""Command line: `pointacc run | sweep | explain` (also `python -m pointacc`).

    pointacc run -c CFG -t TRACE -p OUTDIR [-i trace|gemm|conv] [--fidelity analytic|trace]
    pointacc sweep -c CFG -t TRACE -o sweep.csv --set memory.cache_kb=64,128,256 --set memory.gather_order=output,offset
    pointacc explain -c CFG -t TRACE --layer NAME

CFG is an INI file or a preset name (pointacc, pointacc_edge); TRACE a trace folder, a .jsonl file, a SCALE-Sim
topology .csv (-i gemm: rows name, M, N, K; -i conv: SCALE-Sim's convolution rows; otherwise each row by its
number of fields) or builtin:NAME (pointnet, pointnet2_ssg, dgcnn). As SCALE-Sim does, `run` writes its reports
into OUTDIR/<run_name>/ (run_name from the config's [general] section).

Every problem with an input or an output path ends the command with ``pointacc: error: FILE[:LINE]: message``
on stderr and exit status 2 (argparse's own usage errors also exit with 2).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import pathlib
import sys

from pointacc.config import ConfigError, load_config
from pointacc.limits import MAX_SWEEP_POINTS
from pointacc.simulate import UNITS, cost_of, simulate
from pointacc.workload import ARRAYS, TRACE, Workload, WorkloadError, load_workload


class OutputError(Exception):
    """A report or CSV that cannot be written where the user asked."""


def _workload(spec: str, interface: str) -> Workload:
    if spec.startswith("builtin:"):
        from pointacc.networks import builtin

        try:
            return builtin(spec.split(":", 1)[1])
        except ValueError as error:
            raise WorkloadError(f"{spec}: {error}") from None
    path = pathlib.Path(spec)
    if interface in ("gemm", "conv") and path.suffix != ".csv":
        raise WorkloadError(f"{spec}: -i {interface} expects a SCALE-Sim topology .csv")
    return load_workload(path, interface if interface in ("gemm", "conv") else "auto")


def _report_folder(path: str, run_name: str) -> pathlib.Path:
    """OUTDIR/<run_name>, as SCALE-Sim lays its reports out; run_name must be one plain folder name."""
    if run_name in ("", ".", "..") or any(c in run_name for c in "/\\\0"):
        raise OutputError(f"[general] run_name {run_name!r} cannot name a report folder inside {path}")
    return pathlib.Path(path) / run_name


def _progress(iterable, total):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="layers", unit="op", leave=False)


def run(args) -> int:
    from pointacc.report import write_reports

    config = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    folder = _report_folder(args.path, config.run_name)
    sim = simulate(config, workload, args.fidelity, progress=_progress)
    try:
        summary = write_reports(sim, folder, chart=not args.no_chart)
    except OSError as error:
        raise OutputError(
            f"{error.filename or folder}: cannot write the reports ({error.strerror})"
        ) from None
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
    print(f"  reports in {folder}")
    return 0


def _parse_sets(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--set: expected key=v1,v2,..., got {item!r}")
        if key in grid:
            raise ConfigError(f"--set: {key} is set twice")
        grid[key] = values.split(",")
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_SWEEP_POINTS:
        raise ConfigError(
            f"--set: {points} configurations, more than the {MAX_SWEEP_POINTS} a sweep may have"
        )
    return grid


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses
        return False


def _inputs(args) -> list[pathlib.Path]:
    """The files a command reads (which its output must not overwrite)."""
    paths = [pathlib.Path(args.config)]
    if not args.topology.startswith("builtin:"):
        topology = pathlib.Path(args.topology)
        folder = topology if topology.is_dir() else topology.parent
        paths += [topology, folder / TRACE, folder / ARRAYS]
    return paths


def sweep(args) -> int:
    base = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    out = pathlib.Path(args.output)
    for source in _inputs(args):
        if _same_file(out, source):
            raise OutputError(f"{out}: is an input of this sweep; choose another -o")
    grid = _parse_sets(args.set)
    keys = list(grid)
    configs = []
    for values in itertools.product(*grid.values()):  # every point checked before the first simulation
        try:
            configs.append((values, base.replace(**dict(zip(keys, values)))))
        except ConfigError as error:
            raise ConfigError(
                f"--set {', '.join(f'{k}={v}' for k, v in zip(keys, values))}: {error}"
            ) from None
    rows = []
    for values, config in configs:
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*keys, "total_cycles", "latency_ms", "dram_bytes", "energy_pj"])
            writer.writerows(rows)
    except OSError as error:
        raise OutputError(f"{error.filename or out}: cannot write the sweep ({error.strerror})") from None
    print(f"{len(rows)} configurations -> {out}")
    return 0


def explain(args) -> int:
    config = load_config(args.config)
    workload = _workload(args.topology, args.interface)
    names = [op["name"] for op in workload.ops]
    if args.layer not in names:
        raise WorkloadError(
            f"{args.topology}: no layer {args.layer!r} in {workload.name}; layers: {', '.join(names[:20])}..."
        )
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
        sub.add_argument("-i", "--interface", choices=("trace", "gemm", "conv"), default="trace")
        sub.add_argument("--fidelity", choices=("analytic", "trace"))
        if name == "run":
            sub.add_argument("-p", "--path", required=True, help="reports go to PATH/<run_name>/")
            sub.add_argument("--no-chart", action="store_true")
        elif name == "sweep":
            sub.add_argument("--set", action="append", required=True, help="key=v1,v2,... (repeatable)")
            sub.add_argument("-o", "--output", required=True, help="CSV file")
        else:
            sub.add_argument("--layer", required=True)
    args = parser.parse_args(argv)
    try:
        return {"run": run, "sweep": sweep, "explain": explain}[args.command](args)
    except (ConfigError, WorkloadError, OutputError) as error:
        print(f"pointacc: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
