"""Single sparse-convolution layers: torchsparse vs spconv (CPU), plain PyTorch and dense torch.mm.

For each scene (the bundled SemanticKITTI scan and a synthetic LiDAR scan, 5 cm voxels) and layer (submanifold
3x3x3 at several widths, strided k2 s2, transposed k2 s2, spconv-style k3 s2 p1), every library runs on the same
coordinates, features and weights in this process:
  - torchsparse: "layer" = kernel map + conv on a fresh tensor (for the transposed conv: deriving its map from
    the cached forward map, as spconv's inverse conv reuses its forward pairs); "conv" = conv with the map cached;
  - spconv 2.x CPU (if installed): the equivalent SubMConv3d / SparseConv3d / SparseInverseConv3d, its output
    checked against ours with one thread first (its CPU kernels race with more, docs/conventions.md §5), timed as
    a layer (its indice pairs built on a fresh tensor) and as a conv on cached pairs (indice_key);
  - plain PyTorch: index_select -> mm -> index_add_ per offset on our maps;
  - the portable path that CUDA runs (ops.convolution.conv3d_grouped, default grouping) on the CPU, same map;
  - dense torch.mm of (pairs x C_in) @ (C_in x C_out): the same MACs without gather/scatter.
Prints medians (>= 5 runs after warm-up), GFLOP/s and ratios; writes CSV and PNG to benchmarks/results/.

With --device cuda (or --compare-dataflows on the CPU) it compares dataflows instead, per layer of the bundled scan
and per --dtype, all on the same map, features and weights on that device:
  - dense mm: one torch.mm of (pairs x C_in) @ (C_in x C_out), the same MACs (cuBLAS on a GPU: the ceiling);
  - plain PyTorch: index_select -> mm -> index_add_ per offset;
  - every torchsparse dataflow that `Choice.supports` runs there (gather_scatter = ops.conv3d_grouped on CUDA;
    implicit_gemm; implicit_gemm_sorted with split 1, 2, 4; fused on the CPU), through F.conv3d on the cached map
    (the sorted row orders are memoised in the map: "orders ms" is their one-off cost per map);
  - spconv 2.x where it imports with CUDA (else one line says why).
Each output is compared with a float64 evaluation of the same (rounded) inputs ("rel err" = max abs error / max
abs value). TFLOP/s, ratio to the dense mm, a best-of table; CSV and one PNG per dtype in benchmarks/results/.
float32 GEMMs use TF32 unless --fp32-precision highest. Triton's autotuner times its tiles on the first call of each
layer shape (in the warm-up). On the CPU, TRITON_INTERPRET=1 runs the Triton dataflows in Triton's interpreter
(slow: use --max-voxels 1500 --channels 16).

Usage:
    python benchmarks/ops/bench_convolution.py [--threads 2] [--channels 16 32 64 128 256] [--quick]
    python benchmarks/ops/bench_convolution.py --device cuda [--dtype float16 bfloat16 float32]
    TRITON_INTERPRET=1 python benchmarks/ops/bench_convolution.py --compare-dataflows --max-voxels 1500 --channels 16
"""

import argparse
import itertools
import pathlib

import numpy as np
import torch

import torchsparse
import torchsparse.nn.functional as F
from torchsparse import Choice, SparseTensor, ops
from torchsparse.conv_output import conv_output
from torchsparse.ops.convolution import conv3d_grouped
from torchsparse.settings import DATAFLOWS
from torchsparse.testing import lidar_scan, quantize_scan
from torchsparse.testing.benchmark import (
    bar_chart,
    device_description,
    gflops,
    median_ms,
    print_table,
    spconv_unavailable,
    tflops,
    to_spconv_weight,
    write_csv,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCAN = ROOT / "assets" / "semantickitti" / "000000.bin"
RESULTS = ROOT / "benchmarks" / "results"


def scenes(voxel_size: float) -> dict[str, SparseTensor]:
    kitti = np.fromfile(SCAN, dtype=np.float32).reshape(-1, 4)
    return {"semantickitti": quantize_scan(kitti, voxel_size), "synthetic": quantize_scan(lidar_scan(), voxel_size)}


def layers(channels: list[int], strided_channels: int = 64) -> list[dict]:
    def layer(name, kernel, stride, padding, mode, c, transposed=False):
        return {"name": name, "kernel": kernel, "stride": stride, "padding": padding, "mode": mode, "c": c,
                "transposed": transposed}

    c = strided_channels
    return [layer(f"subm3 {c}", 3, 1, 0, "minkowski", c) for c in channels] + [
        layer(f"down k2s2 {c}", 2, 2, 0, "minkowski", c),
        layer(f"up k2s2 {c}", 2, 2, 0, "minkowski", c, transposed=True),
        layer(f"down k3s2p1 {c}", 3, 2, 1, "spconv", c),
    ]


def aligned(features: torch.Tensor, indices: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows of `features` (whose coordinates are `indices`) reordered to the order of `coords`."""
    keys, order = torch.sort(ops.pack_coords(indices.int()))
    return features[order[torch.searchsorted(keys, ops.pack_coords(coords))]]


def spconv_layer(spec, x: SparseTensor, weight, out_coords: torch.Tensor):
    """(timed layer, timed conv on a cached map, the layer's output aligned to out_coords) for the equivalent spconv
    layer on x's device and dtype, or None if spconv is absent. The layer builds spconv's indice pairs on a fresh
    tensor; the cached conv runs on one tensor whose pairs its first call stored (indice_key; the inverse conv always
    reuses its forward's pairs). The output is computed once with one thread (its CPU kernels race with more)."""
    try:
        import spconv.pytorch as spconv
    except ImportError:
        return None
    k, s, p, c = spec["kernel"], spec["stride"], spec["padding"], spec["c"]
    device, dtype = x.feats.device, x.feats.dtype
    # A grid extent that is a multiple of the stride: spconv's output grid drops a last odd row otherwise.
    shape = [(int(v) + s) // s * s for v in x.cache.coords[(1, 1, 1)][:, 1:].max(0).values]
    if spec.get("transposed"):
        fine = x.cache.coords[(1, 1, 1)]
        down = spconv.SparseConv3d(c, c, k, s, bias=False, indice_key="bench").to(device, dtype)
        conv = spconv.SparseInverseConv3d(c, c, k, indice_key="bench", bias=False).to(device, dtype)
        with torch.no_grad():
            conv.weight.copy_(to_spconv_weight(weight, (k, k, k)))
            # spconv's inverse conv needs its own forward pass to have run on the fine level.
            coarse = down(spconv.SparseConvTensor(x.feats.new_zeros(len(fine), c), fine, shape, 1))
            coarse = coarse.replace_feature(aligned(x.feats, x.coords, coarse.indices.int()))
        run = cached = lambda: conv(coarse).features
        out_indices = lambda: fine
    else:
        if s == 1:
            conv = spconv.SubMConv3d(c, c, k, bias=False, indice_key="bench")
        else:
            conv = spconv.SparseConv3d(c, c, k, s, p, bias=False, indice_key="bench")
        conv = conv.to(device, dtype)
        with torch.no_grad():
            conv.weight.copy_(to_spconv_weight(weight, (k, k, k)))
        holder = {}

        def run():
            out = conv(spconv.SparseConvTensor(x.feats, x.coords, shape, 1))
            holder["indices"] = out.indices
            return out.features

        out_indices = lambda: holder["indices"]
        if s == 1:
            kept = spconv.SparseConvTensor(x.feats, x.coords, shape, 1)
            kept.indice_dict = conv(kept).indice_dict  # the output holds the pairs under "bench"; later calls reuse them
            cached = lambda: conv(kept).features
        else:  # spconv's modules reuse pairs for submanifold and inverse convs only: its own op on its own pairs
            from spconv.pytorch import functional as spconv_functional
            from spconv.pytorch import ops as spconv_ops

            outids, pairs, counts = spconv_ops.get_indice_pairs(
                x.coords, 1, shape, conv.algo, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.output_padding, False, False,
            )
            cached = lambda: spconv_functional.indice_conv(x.feats, conv.weight, pairs, counts, len(outids), conv.algo)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    features = run()
    torch.set_num_threads(threads)
    return run, cached, aligned(features, out_indices(), out_coords)


class TorchConv:
    """Plain PyTorch over a kernel map: per offset, index_select -> mm -> index_add_ (row indices prepared once)."""

    def __init__(self, kmap, num_out: int):
        self.num_out = num_out
        in_rows, out_rows = kmap.in_rows.long(), kmap.out_rows.long()
        bounds = itertools.pairwise([0, *torch.cumsum(kmap.sizes, 0).tolist()])
        self.segments = [(k, in_rows[a:b], out_rows[a:b]) for k, (a, b) in enumerate(bounds) if b > a]

    def __call__(self, feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = feats.new_zeros((self.num_out, weight.shape[2]))
        for k, in_rows, out_rows in self.segments:
            out.index_add_(0, out_rows, feats.index_select(0, in_rows) @ weight[k])
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
    torch_conv = TorchConv(kmap, num_out)
    disagreement = (torch_conv(base.feats, weight) - out.feats).abs().max().item()
    if disagreement > 1e-3:
        print(f"  {spec['name']}: plain PyTorch differs from torchsparse by {disagreement:.1e}")
    torch_ms = median_ms(lambda: torch_conv(base.feats, weight), runs)
    portable_ms = median_ms(
        lambda: conv3d_grouped(base.feats, weight, kmap.in_rows, kmap.out_rows, kmap.sizes, num_out), runs
    )
    dense_a, dense_w = torch.randn(pairs, c), torch.randn(c, c)
    dense_ms = median_ms(lambda: dense_a @ dense_w, runs)
    peer = spconv_layer(spec, base, weight, out.coords)
    nan = float("nan")
    spconv_ms, spconv_conv_ms, error = (
        (median_ms(peer[0], runs), median_ms(peer[1], runs), (peer[2] - out.feats).abs().max().item())
        if peer else (nan, nan, None)
    )
    row = [spec["name"], len(base), pairs, layer_ms, conv_ms, gflops(macs, conv_ms), spconv_ms, torch_ms, dense_ms,
           gflops(macs, dense_ms), spconv_ms / layer_ms, torch_ms / conv_ms, gflops(macs, conv_ms) / gflops(macs, dense_ms),
           portable_ms, portable_ms / conv_ms, spconv_conv_ms, spconv_conv_ms / conv_ms]
    return row, error


HEADER = ["layer", "voxels", "pairs", "ours layer ms", "ours conv ms", "ours GFLOP/s", "spconv layer ms", "torch ms",
          "dense mm ms", "dense GFLOP/s", "spconv/ours", "torch/ours", "ours/dense", "portable ms", "portable/ours",
          "spconv conv ms", "spconv/ours conv"]


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# (dataflow, split) pairs timed by the comparison, where Choice.supports runs them.
CANDIDATES = [(df, split) for df in DATAFLOWS for split in ((1, 2, 4) if df == "implicit_gemm_sorted" else (1,))]
COMPARE_HEADER = ["layer", "dtype", "voxels", "pairs", "GMAC", "impl", "ms", "TFLOP/s", "/ dense mm", "rel err",
                  "orders ms"]


def crop(scene: SparseTensor, max_voxels: int) -> SparseTensor:
    """The max_voxels voxels nearest to the scan's median coordinate (a compact patch), shifted to start at 0."""
    if len(scene) <= max_voxels:
        return scene
    xyz = scene.coords[:, 1:].float()
    keep = ((xyz - xyz.median(0).values) ** 2).sum(1).argsort()[:max_voxels].sort().values
    coords = scene.coords[keep].clone()
    coords[:, 1:] -= coords[:, 1:].min(0).values
    return SparseTensor(scene.feats[keep], coords)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| / max |reference|, in float64."""
    return ((out.double() - reference).abs().max() / reference.abs().max().clamp(min=1e-30)).item()


def compare_layer(spec, scene: SparseTensor, device: torch.device, dtype: torch.dtype, runs: int) -> list[list]:
    """Rows of COMPARE_HEADER for one layer and dtype: the dense mm, plain PyTorch, every supported dataflow and
    spconv, on one map, one set of features and weights."""
    k, s, p, c, mode = spec["kernel"], spec["stride"], spec["padding"], spec["c"], spec["mode"]
    transposed = spec.get("transposed", False)
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(k**3, c, c, generator=gen) / (k**3 * c) ** 0.5).to(device, dtype)
    feats = torch.randn(len(scene), c, generator=gen).to(device, dtype)
    spatial = (1, *((int(v) + s) // s * s for v in scene.coords[:, 1:].max(0).values))
    base = SparseTensor(feats, scene.coords.to(device), spatial_range=spatial)
    if transposed:  # the coarse level of a k2 s2 conv, whose cache holds the fine one
        down = (torch.randn(k**3, c, c, generator=gen) / (k**3 * c) ** 0.5).to(device, dtype)
        base = F.conv3d(base, down, None, k, s)

    def conv():
        return F.conv3d(base, weight, None, k, s, p, transposed=transposed, downsample_mode=mode).feats

    geometry = conv_output(base, (k,) * 3, (s,) * 3, (1,) * 3, (p,) * 3, transposed, False, mode)
    kmap, out_coords = geometry.kmap, geometry.coords
    pairs = int(kmap.sizes.sum())
    macs = pairs * c * c
    torch_conv = TorchConv(kmap, len(out_coords))
    reference = torch_conv(base.feats.double(), weight.double())
    prefix = [spec["name"], str(dtype).removeprefix("torch."), len(base), pairs, macs / 1e9]
    rows = []

    def add(name: str, fn, output=None, orders=None) -> None:
        """Times fn; output() gives the result compared with the reference, orders() the row orders it reads."""
        try:
            error = f"{relative_error(output(), reference):.1e}" if output else ""
            orders_ms = median_ms(orders, runs) if orders else ""
            ms = median_ms(fn, runs)
        except Exception as failure:  # noqa: BLE001  (one failing candidate must not lose the others' numbers)
            message = (str(failure).strip().splitlines() or [""])[0][:200]
            print(f"  {spec['name']} {prefix[1]} {name}: failed: {type(failure).__name__}: {message}")
            return
        rows.append([*prefix, name, ms, tflops(macs, ms), float("nan"), error, orders_ms])

    dense_a = torch.randn(pairs, c, device=device, dtype=dtype)
    dense_w = torch.randn(c, c, device=device, dtype=dtype)
    add("dense mm (cuBLAS)" if device.type == "cuda" else "dense mm", lambda: dense_a @ dense_w)
    add("plain PyTorch", lambda: torch_conv(base.feats, weight), lambda: torch_conv(base.feats, weight))
    for dataflow, split in CANDIDATES:
        if not Choice(dataflow, split=split).supports(dtype, device):
            continue
        name = dataflow if dataflow in ("fused", "gather_scatter") else f"{dataflow} s{split}"

        def run(dataflow=dataflow, split=split):
            with torchsparse.config(dataflow=dataflow, split=split):
                return conv()

        orders = None
        if dataflow == "implicit_gemm_sorted":
            orders = lambda split=split: ops.implicit_gemm_orders(kmap.nbmap, split)
        add(f"ts {name}", run, run, orders)
    if spconv_unavailable(device) is None:
        peer = {}

        def spconv_output():  # spconv is set up here, inside add's error handling: it may lack the dtype
            peer["run"], _, output = spconv_layer(spec, base, weight, out_coords)
            return output

        add("spconv", lambda: peer["run"](), spconv_output)
    if rows and rows[0][5].startswith("dense"):
        for row in rows:
            row[8] = rows[0][6] / row[6]
    return rows


def compare_main(args) -> None:
    device = torch.device(args.device)
    torch.set_float32_matmul_precision(args.fp32_precision)
    kitti = np.fromfile(SCAN, dtype=np.float32).reshape(-1, 4)
    scene = crop(quantize_scan(kitti, args.voxel_size), args.max_voxels) if args.max_voxels else quantize_scan(
        kitti, args.voxel_size
    )
    dtypes = [DTYPES[d] for d in args.dtype]
    why = spconv_unavailable(device)
    print(f"dataflows on {device_description(device)}")
    print(f"real scan, {len(scene)} voxels; dtypes {', '.join(args.dtype)}; float32 matmul precision "
          f"{args.fp32_precision!r}; spconv: {why or 'runs'}; Triton interpreter: "
          f"{ops.HAS_TRITON and ops.triton.interpreted()}")
    skipped = [f"{df}" for df, split in CANDIDATES if not any(Choice(df, split=split).supports(d, device) for d in dtypes)]
    if skipped:
        print(f"not run here (Choice.supports): {', '.join(sorted(set(skipped)))}")
    rows = []
    for spec in layers(args.channels, args.strided_channels):
        if args.layers and not any(word in spec["name"] for word in args.layers):
            continue
        layer_rows = []
        for dtype in dtypes:
            try:
                layer_rows += compare_layer(spec, scene, device, dtype, args.runs)
            except Exception as failure:  # noqa: BLE001  (one failing layer must not lose the others' numbers)
                print(f"  {spec['name']} {dtype}: failed: {type(failure).__name__}: {str(failure).strip()[:200]}")
        print_table(COMPARE_HEADER, layer_rows, machine=False)  # progress; the full table follows
        rows += layer_rows
    tag = device.type
    print("\nper dataflow (medians, ms; '/ dense mm' = dense mm ms / ms: the fraction of the ceiling at equal MACs)")
    print_table(COMPARE_HEADER, rows, device=device)
    write_csv(RESULTS / f"bench_convolution_{tag}.csv", COMPARE_HEADER, rows)

    best_header = ["layer", "dtype", "best torchsparse", "ms", "TFLOP/s", "/ dense mm", "plain PyTorch / best",
                   "spconv / best"]
    best_rows = []
    for key in dict.fromkeys((r[0], r[1]) for r in rows):
        group = [r for r in rows if (r[0], r[1]) == key]
        ours = [r for r in group if r[5].startswith("ts ")]
        if not ours:
            continue
        best = min(ours, key=lambda r: r[6])
        by_name = {r[5]: r[6] for r in group}
        best_rows.append([*key, best[5][3:], best[6], best[7], best[8], by_name["plain PyTorch"] / best[6],
                          by_name.get("spconv", float("nan")) / best[6]])
    print("\nbest torchsparse dataflow per layer and dtype")
    print_table(best_header, best_rows, device=device)
    for dtype in args.dtype:
        subset = [r for r in rows if r[1] == dtype and not r[5].startswith("dense")]
        series: dict[str, list[float]] = {}
        labels = list(dict.fromkeys(r[0] for r in subset))
        for name in dict.fromkeys(r[5] for r in subset):
            series[name] = [next((r[8] for r in subset if r[0] == layer and r[5] == name), 0.0) for layer in labels]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        bar_chart(RESULTS / f"bench_convolution_{tag}_{dtype}.png", labels, series, "fraction of dense mm at equal MACs",
                  f"sparse conv layers, {dtype}, {name}")
    print(f"\nCSV and PNG in {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    parser.add_argument("--quick", action="store_true", help="the bundled scan only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: compare the dataflows on the GPU")
    parser.add_argument("--compare-dataflows", action="store_true", help="the dataflow comparison on --device cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="comparison dtypes (default: all three on "
                        "cuda, float32 on the CPU)")
    parser.add_argument("--fp32-precision", choices=["highest", "high"], default="high",
                        help="torch.set_float32_matmul_precision for the comparison (high: TF32 GEMMs on a GPU)")
    parser.add_argument("--strided-channels", type=int, default=64, help="channels of the strided and transposed layers")
    parser.add_argument("--max-voxels", type=int, default=0, help="comparison: crop the scan to this many voxels")
    parser.add_argument("--layers", nargs="+", help="comparison: only the layers whose name contains one of these "
                        "(subm3, down, up, k2s2, k3s2p1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" or args.compare_dataflows:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda needs an NVIDIA GPU")
        args.dtype = args.dtype or (list(DTYPES) if args.device == "cuda" else ["float32"])
        compare_main(args)
        return
    if args.dtype and args.dtype != ["float32"]:
        parser.error("--dtype applies to the dataflow comparison (--device cuda or --compare-dataflows)")
    print(f"float32, {args.threads} threads; 'layer' includes the kernel map, 'conv' reuses it")
    all_rows = []
    for scene_name, scene in scenes(args.voxel_size).items():
        if args.quick and scene_name != "semantickitti":
            continue
        rows = []
        for spec in layers(args.channels, args.strided_channels):
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
              {"spconv / ours (layer)": [r[11] for r in all_rows], "spconv / ours (conv, maps cached)": [r[17] for r in all_rows],
               "plain torch / ours (conv)": [r[12] for r in all_rows]},
              "speed-up of torchsparse (x)", f"sparse conv layers on CPU, {args.threads} threads")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
