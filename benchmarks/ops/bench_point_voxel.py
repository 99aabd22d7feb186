"""Point-voxel ops (SPVConv) on the real scan: torchsparse's C++ ops vs plain PyTorch on the same input.

Points: the bundled scan's 123,389 points in 5 cm voxel units; voxels: the occupied cells at tensor strides
1, 2, 4 and 8; features float32. The plain-PyTorch baseline finds neighbours by searchsorted over sorted packed
keys, voxelizes with index_add_ and devoxelizes with a gather and a weighted sum. Results are compared before
timing; medians of >= 5 runs.

With --device cuda both run on the GPU (our CUDA kernels against the same PyTorch code on CUDA tensors; the
Timer synchronises around every call), and --dtype float16 / bfloat16 time the feature ops in that dtype where our
ops take it (a dtype they refuse gives one line and no row; points and weights stay float32).

Usage:
    python benchmarks/ops/bench_point_voxel.py [--threads 2] [--channels 64] [--device cuda] [--dtype float32 float16]
"""

import argparse
import itertools
import pathlib

import numpy as np
import torch

from torchsparse import ops
from torchsparse.testing.benchmark import bar_chart, device_description, median_ms, print_table, write_csv

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def torch_keys(cells: torch.Tensor) -> torch.Tensor:
    """The packing of ops.pack_coords, in torch arithmetic: int64 (N, 4) -> int64 (N,)."""
    b, x, y, z = cells.unbind(1)
    return (b << 48) | ((x + 32768) << 32) | ((y + 32768) << 16) | (z + 32768)


def torch_query(points: torch.Tensor, sorted_keys, rows, stride: int):
    """8-neighbour query and v2.1 trilinear weights with searchsorted."""
    q = points[:, 1:] / stride
    f = torch.floor(q)
    frac = q - f
    base = torch.cat([points[:, :1], f], 1).long()
    idx, weights = [], []
    for d in itertools.product((0, 1), repeat=3):
        keys = torch_keys(base + torch.tensor((0, *d), device=points.device))
        pos = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
        found = sorted_keys[pos] == keys
        idx.append(torch.where(found, rows[pos], -1))
        w = torch.ones_like(frac[:, 0])
        for a in range(3):
            w = w * (frac[:, a] if d[a] else 1 - frac[:, a])
        weights.append(w * found)
    idx, weights = torch.stack(idx, 1), torch.stack(weights, 1)
    return idx, weights / (weights.sum(1, keepdim=True) + 1e-8)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def feature_ops(point_feats, feats, one, idx, weights) -> tuple[dict, dict]:
    """(ours, plain PyTorch) voxelize and devoxelize callables on features of one dtype."""
    num_cells = len(feats)
    ours = {
        "voxelize (count + mean)": lambda: ops.voxelize(point_feats, one, ops.point_voxel_count(one, num_cells)),
        "devoxelize": lambda: ops.devoxelize(feats, idx, weights),
    }
    plain = {
        "voxelize (count + mean)": lambda: (
            torch.zeros_like(feats).index_add_(0, one, point_feats)
            / torch.bincount(one, minlength=num_cells).clamp(min=1)[:, None]
        ),
        "devoxelize": lambda: (feats[idx.clamp(min=0)] * weights.unsqueeze(-1)).sum(1),
    }
    return ours, plain


def bench_stride(points, point_feats32, stride: int, dtypes: list[str], runs: int, g) -> list[list]:
    """Rows (op, dtype, ours ms, plain PyTorch ms, speed-up) at one tensor stride, after checking the baseline."""
    device = points.device
    cells = torch.unique(torch.floor(points / torch.tensor([1.0, stride, stride, stride], device=device)).long(), dim=0)
    coords = cells.int()
    feats32 = torch.randn(len(cells), point_feats32.shape[1], generator=g).to(device)
    sorted_keys, order = torch.sort(torch_keys(cells))

    def query():
        table, _ = ops.hash_build(ops.pack_coords(coords))
        return ops.point_voxel_query(points, table, (stride,) * 3, 8)

    idx, weights = query()
    ref_idx, ref_weights = torch_query(points, sorted_keys, order, stride)
    one = ops.point_voxel_query(points, ops.hash_build(ops.pack_coords(coords))[0], (stride,) * 3, 1)[0][:, 0]
    counts = ops.point_voxel_count(one, len(cells))
    checks = [
        bool(torch.equal(idx, ref_idx)),
        (weights - ref_weights).abs().max().item() < 1e-5,
        torch.allclose(
            ops.voxelize(point_feats32, one, counts),
            torch.zeros_like(feats32).index_add_(0, one, point_feats32) / counts.clamp(min=1)[:, None],
            atol=1e-5,
        ),
    ]
    print(f"stride {stride}: {len(cells):,} voxels; baseline agrees: {all(checks)} {checks}")
    query_ms = median_ms(query, runs)
    torch_query_ms = median_ms(lambda: torch_query(points, *torch.sort(torch_keys(cells)), stride), runs)
    rows = [[f"s{stride} query 8 nbrs (incl. hash build)", "float32", query_ms, torch_query_ms, torch_query_ms / query_ms]]
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        ours, plain = feature_ops(point_feats32.to(dtype), feats32.to(dtype), one, idx, weights)
        for name, fn in ours.items():
            try:
                fn()
            except (TypeError, RuntimeError, NotImplementedError) as error:  # a dtype the op does not take
                print(f"  {name} {dtype_name}: not run ({error})")
                continue
            ours_ms = median_ms(fn, runs)
            torch_ms = median_ms(plain[name], runs)
            rows.append([f"s{stride} {name}", dtype_name, ours_ms, torch_ms, torch_ms / ours_ms])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"],
                        help="feature dtypes of voxelize / devoxelize")
    parser.add_argument("--max-points", type=int, default=0, help="the first N points of the scan only (0: all)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs an NVIDIA GPU")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scan = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    if args.max_points:
        scan = scan[: args.max_points]
    xyz = torch.from_numpy(scan[:, :3] / 0.05)
    xyz -= xyz.min(0).values
    points = torch.cat([torch.zeros(len(xyz), 1), xyz], 1).to(device)
    g = torch.Generator().manual_seed(0)
    point_feats32 = torch.randn(len(points), args.channels, generator=g).to(device)
    rows = []
    for stride in (1, 2, 4, 8):
        rows += bench_stride(points, point_feats32, stride, args.dtype, args.runs, g)

    where = device_description(device).split(",")[0]
    print(f"\n{len(points):,} points, {args.channels} channels, on {args.device} ({where}), {args.threads} threads")
    header = ["op", "dtype", "torchsparse ms", "plain PyTorch ms", "speed-up"]
    print_table(header, rows, device=device)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_csv(RESULTS / f"bench_point_voxel{suffix}.csv", header, rows)
    bar_chart(
        RESULTS / f"bench_point_voxel{suffix}.png",
        [f"{r[0]} {r[1]}" for r in rows],
        {"plain PyTorch / torchsparse": [r[4] for r in rows]},
        "speed-up (x)",
        f"point-voxel ops on the real scan ({where})",
    )


if __name__ == "__main__":
    main()
