"""One sparse 3x3x3 submanifold convolution on the real SemanticKITTI scan: torchsparse vs peers.

Peers, on the same voxels, features and weights, in this process:
  - plain PyTorch: kernel map by sort + searchsorted, then per-offset index_select -> mm -> index_add_;
  - spconv 2.x (CPU build from PyPI), if installed.
Outputs are checked against ours before timing. Prints medians and ratios; writes a CSV to benchmarks/results/.

Usage:
    python benchmarks/ops/bench_convolution.py [--channels 64] [--threads 2]
"""

import argparse
import csv
import pathlib

import numpy as np
import torch
from torch.utils.benchmark import Timer

import torchsparse.nn.functional as F
from torchsparse import SparseTensor, ops
from torchsparse.testing import kernel_indices
from torchsparse.utils import sparse_quantize

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCAN = ROOT / "assets" / "semantickitti" / "000000.bin"


def load_voxels(voxel_size: float) -> torch.Tensor:
    points = np.fromfile(SCAN, dtype=np.float32).reshape(-1, 4)
    voxels = sparse_quantize(points[:, :3], voxel_size)
    voxels -= voxels.min(0)
    return torch.from_numpy(np.concatenate([np.zeros((len(voxels), 1), np.int32), voxels], 1))


def torch_kernel_map(coords: torch.Tensor, offsets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Plain-PyTorch submanifold map: per offset, (input rows, output rows) found by binary search."""
    keys = ops.pack_coords(coords)
    sorted_keys, order = torch.sort(keys)
    pairs = []
    for delta in offsets:
        shifted = coords.clone()
        shifted[:, 1:] += delta
        query = ops.pack_coords(shifted)
        pos = torch.searchsorted(sorted_keys, query).clamp_max(len(keys) - 1)
        hit = sorted_keys[pos] == query
        pairs.append((order[pos[hit]], torch.nonzero(hit)[:, 0]))
    return pairs


def torch_conv(feats, weight, pairs) -> torch.Tensor:
    out = feats.new_zeros((feats.shape[0], weight.shape[2]))
    for k, (i, o) in enumerate(pairs):
        out.index_add_(0, o, feats.index_select(0, i) @ weight[k])
    return out


def median_ms(stmt: str, globals_: dict, min_run_time: float) -> float:
    return Timer(stmt, globals=globals_).blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    coords = load_voxels(args.voxel_size)
    c = args.channels
    feats = torch.randn(len(coords), c)
    weight = torch.randn(27, c, c) / (27 * c) ** 0.5
    offsets = torch.tensor([[i - 1 for i in idx] for idx in kernel_indices((3, 3, 3))], dtype=torch.int32)
    print(f"scan: {len(coords)} voxels, 3x3x3 submanifold conv {c}->{c}, float32, {args.threads} threads")

    def ours_layer():
        return F.conv3d(SparseTensor(feats, coords), weight, None, 3).feats

    cached = SparseTensor(feats, coords)
    F.conv3d(cached, weight, None, 3)

    def ours_cached():
        return F.conv3d(cached, weight, None, 3).feats

    def ours_map():
        x = SparseTensor(feats, coords)
        from torchsparse.kernel_map import conv_output

        return conv_output(x, (3, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), False, False, "minkowski")

    pairs = torch_kernel_map(coords, offsets)
    reference = ours_layer()
    assert torch.allclose(torch_conv(feats, weight, pairs), reference, atol=1e-4)
    env = dict(ours_layer=ours_layer, ours_cached=ours_cached, ours_map=ours_map, torch_kernel_map=torch_kernel_map,
               torch_conv=torch_conv, coords=coords, offsets=offsets, feats=feats, weight=weight, pairs=pairs)
    rows = [
        ("torchsparse", "kernel map", median_ms("ours_map()", env, args.min_run_time)),
        ("torchsparse", "conv (cached map)", median_ms("ours_cached()", env, args.min_run_time)),
        ("torchsparse", "layer (map + conv)", median_ms("ours_layer()", env, args.min_run_time)),
        ("plain PyTorch", "kernel map", median_ms("torch_kernel_map(coords, offsets)", env, args.min_run_time)),
        ("plain PyTorch", "conv (cached map)", median_ms("torch_conv(feats, weight, pairs)", env, args.min_run_time)),
        ("plain PyTorch", "layer (map + conv)",
         median_ms("torch_conv(feats, weight, torch_kernel_map(coords, offsets))", env, args.min_run_time)),
    ]
    rows += spconv_rows(coords, feats, weight, reference, args)

    ours = {what: ms for who, what, ms in rows if who == "torchsparse"}
    print(f"{'library':<16}{'what':<22}{'median ms':>10}{'vs torchsparse':>16}")
    for who, what, ms in rows:
        print(f"{who:<16}{what:<22}{ms:>10.2f}{ms / ours[what]:>15.2f}x")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_convolution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["library", "what", "median_ms", "voxels", "channels", "threads"])
        for row in rows:
            writer.writerow([*row, len(coords), c, args.threads])


def spconv_rows(coords, feats, weight, reference, args) -> list[tuple[str, str, float]]:
    try:
        import spconv.pytorch as spconv
    except ImportError:
        print("spconv not installed: skipped (pip install spconv)")
        return []
    c = feats.shape[1]
    conv = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="subm")
    with torch.no_grad():
        # spconv weight (C_out, kx, ky, kz, C_in); ours (K, C_in, C_out) with x fastest.
        dense = torch.zeros(c, 3, 3, 3, c)
        for k, (ix, iy, iz) in enumerate(kernel_indices((3, 3, 3))):
            dense[:, ix, iy, iz, :] = weight[k].T
        conv.weight.copy_(dense)
    shape = (coords[:, 1:].max(0).values + 1).tolist()

    def run():
        x = spconv.SparseConvTensor(feats, coords, shape, 1)
        return conv(x).features

    # spconv's CPU gather/scatter races with more than one thread (REFERENCE.md §6): check with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    error = (run() - reference).abs().max().item()
    torch.set_num_threads(threads)
    print(f"spconv max abs difference to ours (1 thread): {error:.2e}")
    return [("spconv 2.x", "layer (map + conv)", median_ms("run()", dict(run=run), args.min_run_time))]


if __name__ == "__main__":
    with torch.inference_mode():
        main()
