"""Single sparse-convolution layers: torchsparse vs spconv (CPU), plain PyTorch and dense torch.mm.

For each scene (the bundled SemanticKITTI scan and a synthetic LiDAR scan, 5 cm voxels) and layer (submanifold
3x3x3 at several widths, strided k2 s2, transposed k2 s2, spconv-style k3 s2 p1), every library runs on the same
coordinates, features and weights in this process:
  - torchsparse: "layer" = kernel map + conv on a fresh tensor (for the transposed conv: deriving its map from
    the cached forward map, as spconv's inverse conv reuses its forward pairs); "conv" = conv with the map cached;
  - spconv 2.x CPU (if installed): the equivalent SubMConv3d / SparseConv3d / SparseInverseConv3d, its output
    checked against ours with one thread first (its CPU kernels race with more, REFERENCE.md §6);
  - plain PyTorch: index_select -> mm -> index_add_ per offset on our maps;
  - the portable path that CUDA runs (ops.convolution.conv3d_grouped, default grouping) on the CPU, same map;
  - dense torch.mm of (pairs x C_in) @ (C_in x C_out): the same MACs without gather/scatter.
Prints medians (>= 5 runs after warm-up), GFLOP/s and ratios; writes CSV and PNG to benchmarks/results/.

Usage:
    python benchmarks/ops/bench_convolution.py [--threads 2] [--channels 16 32 64 128 256] [--quick]
"""

import argparse
import pathlib

import numpy as np
import torch

import torchsparse.nn.functional as F
from torchsparse import SparseTensor
from torchsparse.conv_output import conv_output
from torchsparse.ops.convolution import conv3d_grouped
from torchsparse.testing import lidar_scan, quantize_scan
from torchsparse.testing.benchmark import (
    bar_chart,
    gflops,
    median_ms,
    print_table,
    to_spconv_weight,
    write_csv,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCAN = ROOT / "assets" / "semantickitti" / "000000.bin"
RESULTS = ROOT / "benchmarks" / "results"


def scenes(voxel_size: float) -> dict[str, SparseTensor]:
    kitti = np.fromfile(SCAN, dtype=np.float32).reshape(-1, 4)
    return {"semantickitti": quantize_scan(kitti, voxel_size), "synthetic": quantize_scan(lidar_scan(), voxel_size)}


def layers(channels: list[int]) -> list[dict]:
    subm = [dict(name=f"subm3 {c}", kernel=3, stride=1, padding=0, mode="minkowski", c=c) for c in channels]
    return subm + [
        dict(name="down k2s2 64", kernel=2, stride=2, padding=0, mode="minkowski", c=64),
        dict(name="up k2s2 64", kernel=2, stride=2, padding=0, mode="minkowski", c=64, transposed=True),
        dict(name="down k3s2p1 64", kernel=3, stride=2, padding=1, mode="spconv", c=64),
    ]


def aligned(features: torch.Tensor, indices: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows of `features` (whose coordinates are `indices`) reordered to the order of `coords`."""
    from torchsparse import ops

    keys, order = torch.sort(ops.pack_coords(indices.int()))
    return features[order[torch.searchsorted(keys, ops.pack_coords(coords))]]


def spconv_layer(spec, x: SparseTensor, weight, ours_out: SparseTensor):
    """(timed callable, max abs difference to ours) for the equivalent spconv layer, or None if absent."""
    try:
        import spconv.pytorch as spconv
    except ImportError:
        return None
    k, s, p, c = spec["kernel"], spec["stride"], spec["padding"], spec["c"]
    # A grid extent that is a multiple of the stride: spconv's output grid drops a last odd row otherwise.
    shape = [(int(v) + s) // s * s for v in x.cache.coords[(1, 1, 1)][:, 1:].max(0).values]
    if spec.get("transposed"):
        fine = x.cache.coords[(1, 1, 1)]
        down = spconv.SparseConv3d(c, c, k, s, bias=False, indice_key="bench")
        conv = spconv.SparseInverseConv3d(c, c, k, indice_key="bench", bias=False)
        with torch.no_grad():
            conv.weight.copy_(to_spconv_weight(weight, (k, k, k)))
            # spconv's inverse conv needs its own forward pass to have run on the fine level.
            coarse = down(spconv.SparseConvTensor(torch.zeros(len(fine), c), fine, shape, 1))
            coarse = coarse.replace_feature(aligned(x.feats, x.coords, coarse.indices.int()))
        run = lambda: conv(coarse).features  # noqa: E731
        out_indices = lambda: fine  # noqa: E731
    else:
        if s == 1:
            conv = spconv.SubMConv3d(c, c, k, bias=False)
        else:
            conv = spconv.SparseConv3d(c, c, k, s, p, bias=False)
        with torch.no_grad():
            conv.weight.copy_(to_spconv_weight(weight, (k, k, k)))
        holder = {}

        def run():
            out = conv(spconv.SparseConvTensor(x.feats, x.coords, shape, 1))
            holder["indices"] = out.indices
            return out.features

        out_indices = lambda: holder["indices"]  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    features = run()
    torch.set_num_threads(threads)
    error = (aligned(features, out_indices(), ours_out.coords) - ours_out.feats).abs().max().item()
    return run, error


def torch_conv(feats, weight, kmap, num_out):
    out = feats.new_zeros((num_out, weight.shape[2]))
    in_rows, out_rows = kmap.in_rows.long(), kmap.out_rows.long()
    start = 0
    for k, n in enumerate(kmap.sizes.tolist()):
        if n:
            out.index_add_(0, out_rows[start:start + n], feats.index_select(0, in_rows[start:start + n]) @ weight[k])
        start += n
    return out


def bench_layer(spec, scene: SparseTensor, runs: int) -> tuple[list, float | None]:
    k, s, p, c, mode = spec["kernel"], spec["stride"], spec["padding"], spec["c"], spec["mode"]
    transposed = spec.get("transposed", False)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(k**3, c, c, generator=gen) / (k**3 * c) ** 0.5
    spatial = (1, *((int(v) + s) // s * s for v in scene.coords[:, 1:].max(0).values))

    def fresh() -> SparseTensor:
        x = SparseTensor(torch.randn(len(scene), c, generator=torch.Generator().manual_seed(1)), scene.coords,
                         spatial_range=spatial)
        if transposed:
            x = F.conv3d(x, torch.randn(k**3, c, c, generator=gen) / (k**3 * c) ** 0.5, None, k, s)
        return x

    def ours_layer():
        x = SparseTensor(base.feats, base.coords, spatial_range=spatial)
        return F.conv3d(x, weight, None, k, s, p, downsample_mode=mode)

    def ours_transposed_layer():
        # As in a network (and as spconv's inverse conv): the forward map is cached, the transposed one is not.
        for key in [key for key in base.cache.kmaps if key[0] == "transposed"]:
            del base.cache.kmaps[key]
        return F.conv3d(base, weight, None, k, s, transposed=True)

    base = fresh()
    out = F.conv3d(base, weight, None, k, s, p, transposed=transposed, downsample_mode=mode)
    geometry = conv_output(base, (k,) * 3, (s,) * 3, (1,) * 3, (p,) * 3, transposed, False, mode)
    kmap, num_out = geometry.kmap, geometry.coords.shape[0]
    pairs = int(kmap.sizes.sum())
    macs = pairs * c * c
    layer_ms = median_ms(ours_transposed_layer if transposed else ours_layer, runs)
    conv_ms = median_ms(lambda: F.conv3d(base, weight, None, k, s, p, transposed=transposed, downsample_mode=mode), runs)
    reference = torch_conv(base.feats, weight, kmap, num_out)
    assert torch.allclose(reference, out.feats, atol=1e-3), "plain PyTorch disagrees with torchsparse"
    torch_ms = median_ms(lambda: torch_conv(base.feats, weight, kmap, num_out), runs)
    portable_ms = median_ms(
        lambda: conv3d_grouped(base.feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, num_out), runs
    )
    dense_a, dense_w = torch.randn(pairs, c), torch.randn(c, c)
    dense_ms = median_ms(lambda: dense_a @ dense_w, runs)
    peer = spconv_layer(spec, base, weight, out)
    spconv_ms, error = (median_ms(peer[0], runs), peer[1]) if peer else (float("nan"), None)
    row = [spec["name"], len(base), pairs, layer_ms, conv_ms, gflops(macs, conv_ms), spconv_ms, torch_ms, dense_ms,
           gflops(macs, dense_ms), spconv_ms / layer_ms, torch_ms / conv_ms, gflops(macs, conv_ms) / gflops(macs, dense_ms),
           portable_ms, portable_ms / conv_ms]
    return row, error


HEADER = ["layer", "voxels", "pairs", "ours layer ms", "ours conv ms", "ours GFLOP/s", "spconv ms", "torch ms",
          "dense mm ms", "dense GFLOP/s", "spconv/ours", "torch/ours", "ours/dense", "portable ms", "portable/ours"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    parser.add_argument("--quick", action="store_true", help="the bundled scan only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"float32, {args.threads} threads; 'layer' includes the kernel map, 'conv' reuses it")
    all_rows = []
    for scene_name, scene in scenes(args.voxel_size).items():
        if args.quick and scene_name != "semantickitti":
            continue
        rows = []
        for spec in layers(args.channels):
            row, error = bench_layer(spec, scene, args.runs)
            if error is not None:
                print(f"  {scene_name} {spec['name']}: spconv max abs difference to ours {error:.1e} (1 thread)")
            rows.append(row)
        print(f"\n{scene_name}: {len(scene)} voxels")
        print_table(HEADER, rows)
        all_rows += [[scene_name, *row] for row in rows]
    write_csv(RESULTS / "bench_convolution.csv", ["scene", *HEADER], all_rows)
    labels = [f"{r[0][:5]} {r[1]}" for r in all_rows]
    bar_chart(RESULTS / "bench_convolution.png", labels,
              {"spconv / ours (layer)": [r[11] for r in all_rows], "plain torch / ours (conv)": [r[12] for r in all_rows]},
              "speed-up of torchsparse (x)", f"sparse conv layers on CPU, {args.threads} threads")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
