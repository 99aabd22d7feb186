"""Point-voxel ops (SPVConv) on the real scan: torchsparse's C++ ops vs plain PyTorch on the same input.

Points: the bundled scan's 123,389 points in 5 cm voxel units; voxels: the occupied cells at tensor strides
1, 2, 4 and 8; features float32. The plain-PyTorch baseline finds neighbours by searchsorted over sorted packed
keys, voxelizes with index_add_ and devoxelizes with a gather and a weighted sum. Results are compared before
timing; medians of >= 5 runs.

Usage:
    python benchmarks/ops/bench_point_voxel.py [--threads 2] [--channels 64]
"""

import argparse
import itertools
import pathlib

import numpy as np
import torch

from torchsparse import ops
from torchsparse.testing.benchmark import bar_chart, median_ms, print_table, write_csv

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
        keys = torch_keys(base + torch.tensor((0, *d)))
        pos = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
        found = sorted_keys[pos] == keys
        idx.append(torch.where(found, rows[pos], -1))
        w = torch.ones_like(frac[:, 0])
        for a in range(3):
            w = w * (frac[:, a] if d[a] else 1 - frac[:, a])
        weights.append(w * found)
    idx, weights = torch.stack(idx, 1), torch.stack(weights, 1)
    return idx, weights / (weights.sum(1, keepdim=True) + 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scan = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    xyz = torch.from_numpy(scan[:, :3] / 0.05)
    xyz -= xyz.min(0).values
    points = torch.cat([torch.zeros(len(xyz), 1), xyz], 1)
    g = torch.Generator().manual_seed(0)
    point_feats = torch.randn(len(points), args.channels, generator=g)

    rows = []
    for stride in (1, 2, 4, 8):
        cells = torch.unique(torch.floor(points / torch.tensor([1.0, stride, stride, stride])).long(), dim=0)
        coords = cells.int()
        feats = torch.randn(len(cells), args.channels, generator=g)
        sorted_keys, order = torch.sort(torch_keys(cells))

        def query():
            table, _ = ops.hash_build(ops.pack_coords(coords))
            return ops.point_voxel_query(points, table, (stride,) * 3, 8)

        idx, weights = query()
        ref_idx, ref_weights = torch_query(points, sorted_keys, order, stride)
        one = ops.point_voxel_query(points, ops.hash_build(ops.pack_coords(coords))[0], (stride,) * 3, 1)[0][
            :, 0
        ]
        counts = ops.point_voxel_count(one, len(cells))
        checks = [
            bool(torch.equal(idx, ref_idx)),
            (weights - ref_weights).abs().max().item() < 1e-5,
            torch.allclose(
                ops.voxelize(point_feats, one, counts),
                torch.zeros_like(feats).index_add_(0, one, point_feats) / counts.clamp(min=1)[:, None],
                atol=1e-5,
            ),
        ]
        print(f"stride {stride}: {len(cells):,} voxels; baseline agrees: {all(checks)} {checks}")
        ours_ops = {
            "query 8 nbrs (incl. hash build)": query,
            "voxelize (count + mean)": lambda: ops.voxelize(
                point_feats, one, ops.point_voxel_count(one, len(cells))
            ),
            "devoxelize": lambda: ops.devoxelize(feats, idx, weights),
        }
        torch_ops = {
            "query 8 nbrs (incl. hash build)": lambda: torch_query(
                points, *torch.sort(torch_keys(cells)), stride
            ),
            "voxelize (count + mean)": lambda: (
                torch.zeros_like(feats).index_add_(0, one, point_feats)
                / torch.bincount(one, minlength=len(cells)).clamp(min=1)[:, None]
            ),
            "devoxelize": lambda: (feats[idx.clamp(min=0)] * weights.unsqueeze(-1)).sum(1),
        }
        for name in ours_ops:
            ours_ms = median_ms(ours_ops[name], args.runs)
            torch_ms = median_ms(torch_ops[name], args.runs)
            rows.append([f"s{stride} {name}", ours_ms, torch_ms, torch_ms / ours_ms])
    print(f"\n{len(points):,} points, {args.channels} channels, {args.threads} threads, float32")
    print_table(["op", "torchsparse ms", "plain PyTorch ms", "speed-up"], rows)
    write_csv(RESULTS / "bench_point_voxel.csv", ["op", "torchsparse_ms", "torch_ms", "speedup"], rows)
    bar_chart(
        RESULTS / "bench_point_voxel.png",
        [r[0] for r in rows],
        {"plain PyTorch / torchsparse": [r[3] for r in rows]},
        "speed-up (x)",
        "point-voxel ops on the real scan (CPU)",
    )


if __name__ == "__main__":
    main()
