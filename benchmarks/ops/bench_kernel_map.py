"""Kernel-map construction: torchsparse vs spconv's indice generation, on the same coordinates.

Maps: submanifold 3x3x3, strided k2 s2 (Minkowski semantics; spconv's k2 s2 p0 gives the same sites), strided
k3 s2 p1 (spconv semantics) and transposed k2 s2 (built from the cached levels; spconv's inverse conv only
reuses its forward pairs, so it has no build step to compare). Our time covers the sorted index, output sites,
neighbour table and pair list; spconv's covers get_indice_pairs. Medians of >= 5 runs after warm-up.

With --device cuda the same maps are also built on the GPU from the same coordinates, and the table adds the GPU's
time, its speed-up over our CPU build (the Timer synchronises the device around every call), whether its map equals
the CPU's (same output coordinates and the same pairs per offset), and spconv's GPU indice generation where spconv
imports with CUDA (else one line says why).

Usage:
    python benchmarks/ops/bench_kernel_map.py [--threads 2] [--device cuda]
"""

import argparse
import pathlib

import numpy as np
import torch

from torchsparse import SparseTensor
from torchsparse.conv_output import conv_output
from torchsparse.testing import lidar_scan, quantize_scan
from torchsparse.testing.benchmark import (
    bar_chart,
    device_description,
    median_ms,
    print_table,
    spconv_unavailable,
    write_csv,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MAPS = [
    ("subm k3", 3, 1, 0, "minkowski", False),
    ("down k2s2", 2, 2, 0, "minkowski", False),
    ("down k3s2p1", 3, 2, 1, "spconv", False),
    ("up k2s2", 2, 2, 0, "minkowski", True),
]


def ours(coords: torch.Tensor, spatial, kernel, stride, padding, mode, transposed):
    """A callable that builds the map from scratch (on coords' device) and returns the ConvOutput."""
    ks, st, dl = (kernel,) * 3, (stride,) * 3, (1, 1, 1)
    empty = torch.empty(len(coords), 0, device=coords.device)
    if transposed:
        x = SparseTensor(empty, coords, spatial_range=spatial)
        down = conv_output(x, ks, st, dl, (0, 0, 0), False, False, mode)
        coarse = SparseTensor._derived(x.feats, down.coords, down.stride, down.spatial_range, x.cache)

        def run():
            x.cache.kmaps.clear()  # keep the levels' coordinates and indices, drop the forward map
            return conv_output(coarse, ks, st, dl, (0, 0, 0), True, False, mode)

        return run

    def run():
        x = SparseTensor(empty, coords, spatial_range=spatial)
        return conv_output(x, ks, st, dl, (padding,) * 3, False, False, mode)

    return run


def spconv_map(coords, spatial, kernel, stride, padding):
    try:
        from spconv.core import ConvAlgo
        from spconv.pytorch import ops
    except ImportError:
        return None
    subm = stride == 1

    def run():
        return ops.get_indice_pairs(coords, 1, list(spatial[1:]), ConvAlgo.Native, [kernel] * 3, [stride] * 3,
                                    [padding if not subm else kernel // 2] * 3, [1] * 3, [0] * 3, subm, False)

    return run, lambda: int(run()[2].sum())


def same_map(cpu, gpu) -> bool:
    """Whether two ConvOutputs hold the same output coordinates and the same pairs (as sets) per offset."""
    if not torch.equal(cpu.coords, gpu.coords.cpu()) or not torch.equal(cpu.kmap.sizes, gpu.kmap.sizes.cpu()):
        return False
    pairs = [torch.stack([o.kmap.in_rows.cpu().long(), o.kmap.out_rows.cpu().long()], 1) for o in (cpu, gpu)]
    offsets = torch.repeat_interleave(torch.arange(len(cpu.kmap.sizes)), cpu.kmap.sizes)
    keys = [torch.sort((offsets * 2**21 + p[:, 1]) * 2**21 + p[:, 0]).values for p in pairs]
    return bool(torch.equal(*keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: also time the GPU build")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs an NVIDIA GPU")
    torch.set_num_threads(args.threads)
    kitti = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    scenes = {"semantickitti": quantize_scan(kitti, args.voxel_size), "synthetic": quantize_scan(lidar_scan(), args.voxel_size)}
    header = ["scene", "map", "voxels", "pairs", "ours ms", "spconv ms", "spconv pairs", "spconv/ours"]
    gpu_spconv = None
    if args.device == "cuda":
        header += ["ours GPU ms", "GPU speed-up", "GPU map == CPU map", "spconv GPU ms", "spconv GPU / ours GPU"]
        gpu_spconv = spconv_unavailable("cuda")
        print(f"GPU: {device_description('cuda')}; spconv on the GPU: {gpu_spconv or 'runs'}")
    rows = []
    for scene_name, scene in scenes.items():
        coords = scene.coords
        spatial = (1, *((int(v) + 2) // 2 * 2 for v in coords[:, 1:].max(0).values))
        for name, kernel, stride, padding, mode, transposed in MAPS:
            run = ours(coords, spatial, kernel, stride, padding, mode, transposed)
            ours_ms = median_ms(run, args.runs)
            peer = None if transposed else spconv_map(coords, spatial, kernel, stride, padding)
            peer_ms = median_ms(peer[0], args.runs) if peer else float("nan")
            peer_pairs = peer[1]() if peer else "-"
            row = [scene_name, name, len(coords), int(run().kmap.sizes.sum()), ours_ms, peer_ms, peer_pairs,
                   peer_ms / ours_ms]
            if args.device == "cuda":
                gpu_run = ours(coords.cuda(), spatial, kernel, stride, padding, mode, transposed)
                gpu_ms = median_ms(gpu_run, args.runs)
                peer = None if transposed or gpu_spconv else spconv_map(coords.cuda(), spatial, kernel, stride, padding)
                peer_gpu_ms = median_ms(peer[0], args.runs) if peer else float("nan")
                row += [gpu_ms, ours_ms / gpu_ms, same_map(run(), gpu_run()), peer_gpu_ms, peer_gpu_ms / gpu_ms]
            rows.append(row)
    print(f"kernel-map build, {args.threads} threads (medians, ms)")
    print_table(header, rows, device=args.device)
    write_csv(RESULTS / "bench_kernel_map.csv", header, rows)
    measured = [r for r in rows if r[7] == r[7]]
    bar_chart(RESULTS / "bench_kernel_map.png", [f"{r[0][:5]} {r[1]}" for r in measured],
              {"spconv / ours": [r[7] for r in measured]}, "speed-up of torchsparse (x)", "kernel-map build on CPU")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
