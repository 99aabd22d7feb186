"""End-to-end forward of MinkUNet (torchsparse.models) vs the same network built from spconv layers.

MinkUNet (docs/conventions.md §2; widths [32, 32, 64, 128, 256, 256, 128, 96, 96] x cr): a stem of two 3x3x3
submanifold convs, four stages [k2 s2 conv, 2 residual blocks], four up stages [k2 s2 transposed conv, concat
skip, 2 residual blocks] and a linear classifier. Both libraries get the same (random) weights; spconv's output is
compared with ours on one thread (its CPU kernels race with more), then timed at torch's default thread count.

Rows: our model after torchsparse.nn.fuse (BatchNorm folded, ReLU and residual additions in the convolutions'
epilogues), the unfused model (auto dataflow, gather_scatter, a tuned plan), spconv. Every forward builds its kernel
maps (a fresh tensor per run). Times are medians of interleaved rounds (each round runs every row once), so load
changes on a shared machine hit all rows alike; peak RSS added is the resident high-water mark of one forward over
the resident size before it (Linux). The breakdown profiles one forward per row. --precision adds bfloat16 /
float16: torch's GEMM at the convolution's shapes (the ceiling), one convolution, the fused model under
torch.autocast, and the fraction of voxels keeping the float32 argmax class.

Usage:
    python benchmarks/models/bench_minkunet.py [--cr 1.0] [--threads 2] [--batch 1] [--runs 5] [--precision]
    python benchmarks/models/bench_minkunet.py --device cuda [--cr 1.0] [--batch 8]   # dataflows x dtypes on a GPU
"""

import argparse
import copy
import pathlib

import numpy as np
import torch
from torch import nn
from torch.utils.benchmark import Timer

import torchsparse
import torchsparse.nn as spnn
import torchsparse.nn.functional as F
from torchsparse import SparseTensor
from torchsparse.conv_output import conv_output
from torchsparse.models import MinkUNet
from torchsparse.models.minkunet import ResidualBlock
from torchsparse.testing import quantize_scan
from torchsparse.testing.benchmark import (
    bar_chart,
    device_description,
    interleaved_medians_ms,
    peak_memory_mb,
    print_table,
    spconv_unavailable,
    to_spconv_weight,
    write_csv,
)
from torchsparse.utils import sparse_collate

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before --threads applies


def spconv_twin(net: MinkUNet):
    """The same network from spconv layers, with net's weights; None when spconv is missing."""
    try:
        import spconv.pytorch as spconv
    except ImportError:
        return None

    def conv(layer: spnn.Conv3d, key: str):
        k = layer.kernel_size[0]
        dense = to_spconv_weight(layer.kernel.detach(), layer.kernel_size)
        if layer.transposed:
            twin = spconv.SparseInverseConv3d(layer.in_channels, layer.out_channels, k, indice_key=key, bias=False)
        elif layer.stride != (1, 1, 1):
            twin = spconv.SparseConv3d(layer.in_channels, layer.out_channels, k, 2, bias=False, indice_key=key)
        else:
            twin = spconv.SubMConv3d(layer.in_channels, layer.out_channels, k, bias=False, indice_key=key)
        with torch.no_grad():
            twin.weight.copy_(dense)
        return twin

    def seq(modules, level):
        out = []
        for m in modules:
            if isinstance(m, spnn.Conv3d):
                strided = m.stride != (1, 1, 1)
                out.append(conv(m, f"down{level}" if strided else f"subm{level}k{m.kernel_size[0]}"))
            elif isinstance(m, spnn.BatchNorm):
                bn = nn.BatchNorm1d(m.num_features)
                bn.load_state_dict(m.state_dict())
                out.append(bn)
            elif isinstance(m, spnn.ReLU):
                out.append(nn.ReLU(True))
        return spconv.SparseSequential(*out)

    class Res(spconv.SparseModule):
        def __init__(self, block: ResidualBlock, level):
            super().__init__()
            self.net = seq(block.net, level)
            self.downsample = None if isinstance(block.downsample, nn.Identity) else seq(block.downsample, level)

        def forward(self, x):
            skip = x if self.downsample is None else self.downsample(x)
            y = self.net(x)
            return y.replace_feature(torch.relu(y.features + skip.features))

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = seq(net.stem, 0)
            stages = (net.stage1, net.stage2, net.stage3, net.stage4)
            self.stages = nn.ModuleList(
                spconv.SparseSequential(seq(s[0].net, i), Res(s[1], i + 1), Res(s[2], i + 1)) for i, s in enumerate(stages)
            )
            ups = (net.up1, net.up2, net.up3, net.up4)
            self.ups = nn.ModuleList(
                nn.ModuleList([seq(up[0].net, 3 - i), spconv.SparseSequential(Res(up[1][0], 3 - i), Res(up[1][1], 3 - i))])
                for i, up in enumerate(ups)
            )
            self.classifier = net.classifier

        def forward(self, x):
            levels = [self.stem(x)]
            for stage in self.stages:
                levels.append(stage(levels[-1]))
            y = levels[-1]
            for i, (up, fuse) in enumerate(self.ups):
                u = up(y)
                y = fuse(u.replace_feature(torch.cat([u.features, levels[3 - i].features], 1)))
            return self.classifier(y.features)

    # spconv's transposed convs reuse the pairs of the strided conv with the same indice key; the strided conv of
    # stage i reads level i, so its key is down{i} and the transposed conv back to level i uses the same key.
    return Twin().eval()


def count_macs(net: nn.Module, x: SparseTensor) -> int:
    """Multiply-accumulates of all sparse convolutions of one forward (pairs x C_in x C_out per layer)."""
    total = 0

    def hook(layer, inputs, output):
        nonlocal total
        out = conv_output(inputs[0], layer.kernel_size, layer.stride, layer.dilation, layer.padding, layer.transposed,
                          layer.generative, layer.downsample_mode)
        total += int(out.kmap.sizes.sum()) * layer.in_channels * layer.out_channels

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, spnn.Conv3d)]
    net(x)
    for handle in handles:
        handle.remove()
    return total


def breakdown(forward, label: str) -> dict[str, float]:
    """Milliseconds per stage of one forward() from the profiler (self CPU time of our ops and of the rest)."""
    groups = {
        "kernel maps": ("torchsparse::kernel_map", "torchsparse::kernel_map_pairs", "torchsparse::strided_coords",
                        "torchsparse::pack_coords", "aten::sort", "aten::index_put", "aten::repeat_interleave"),
        "gather": ("torchsparse::gather",),
        "GEMM": ("aten::mm", "aten::addmm"),
        "scatter": ("torchsparse::scatter",),
        "fused conv (gather+GEMM+scatter+epilogue)": ("torchsparse::conv3d_fused",),
        "batch norm": ("aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training"),
        "ReLU, residual add": ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::add",
                               "aten::add_"),
        "concatenation": ("aten::cat",),
    }
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward()
    out = {name: 0.0 for name in groups}
    total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        for name, keys in groups.items():
            if event.key in keys:
                out[name] += event.self_cpu_time_total / 1e3
    out["other"] = total / 1e3 - sum(out.values())
    return out


# Rows of the precision tables: (name, dtype, ConvConfig.reduced_precision_reduction). "float16" is the default
# (float16 products and short float16 sums on CPUs with AVX512-FP16), "float16 f32-sums" float32 sums throughout.
PRECISIONS = [
    ("float32", torch.float32, True),
    ("bfloat16", torch.bfloat16, True),
    ("float16", torch.float16, True),
    ("float16 f32-sums", torch.float16, False),
]


def precision(scan: SparseTensor, fused: nn.Module, fresh, runs: int, threads: int) -> None:
    """bfloat16 / float16 against float32: torch's own GEMM at the conv's shapes (the ceiling), one submanifold
    3x3x3 conv on the scan's map (fused dataflow, map cached, weights converted once) with its relative RMS error
    against float64 arithmetic on the same rounded operands, the fused MinkUNet under torch.autocast, and the
    fraction of voxels keeping the float32 argmax class."""
    n = len(scan)
    print(f"\nAVX512-FP16 float16 products in the fused conv: {'yes' if torchsparse.ops.cpu_has_avx512fp16() else 'no'}")
    rows = []
    for c in (64, 128, 256):
        a, b = torch.randn(n, c), torch.randn(c, c) / c**0.5
        gemm = {d: (a.to(d), b.to(d)) for d in (torch.float32, torch.bfloat16, torch.float16)}
        x = SparseTensor(torch.randn(n, c), scan.coords)
        weight = torch.randn(27, c, c) / (27 * c) ** 0.5
        F.conv3d(x, weight)  # builds and caches the map

        def conv(inputs, reduced):
            def run():
                with torchsparse.config(dataflow="fused", reduced_precision_reduction=reduced):
                    return F.conv3d(*inputs)

            return run

        fns = {f"gemm {d}": (lambda v=v: v[0] @ v[1]) for d, v in gemm.items()}
        fns.update({name: conv((x.replace(x.feats.to(d)), weight.to(d)), r) for name, d, r in PRECISIONS})
        ms = interleaved_medians_ms(fns, runs)  # GEMMs and convs interleaved: one load level for all
        # Error of each conv against float64 arithmetic on its own (rounded) operands: relative RMS.
        error = {}
        for name, d, r in PRECISIONS:
            low = (x.replace(x.feats.to(d)), weight.to(d))
            exact = F.conv3d(low[0].replace(low[0].feats.double()), low[1].double()).feats
            error[name] = ((fns[name]().feats.double() - exact).norm() / exact.norm()).item()
        pairs = int(conv_output(x, (3, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), False, False, "minkowski").kmap.sizes.sum())
        gemm_f32 = ms[f"gemm {torch.float32}"]
        for name, d, _ in PRECISIONS[1:]:
            gemm_x, conv_x = gemm_f32 / ms[f"gemm {d}"], ms["float32"] / ms[name]
            rows.append([c, name, gemm_f32, ms[f"gemm {d}"], gemm_x, 2 * n * c * c / ms[f"gemm {d}"] / 1e6,
                         ms["float32"], ms[name], conv_x, 100 * conv_x / gemm_x,
                         2 * pairs * c * c / ms["float32"] / 1e6, 2 * pairs * c * c / ms[name] / 1e6,
                         f"{error[name]:.1e}"])
    print(f"\nlow precision: {n} x C @ C x C GEMM (torch a @ b, {threads} threads) vs submanifold 3x3x3 conv C -> C "
          "(fused dataflow, map cached, weights converted once)")
    print_table(["C", "dtype", "GEMM f32 ms", "GEMM ms", "GEMM speed-up", "GEMM GFLOP/s", "conv f32 ms", "conv ms",
                 "conv speed-up", "% of GEMM speed-up", "conv f32 GFLOP/s", "conv GFLOP/s", "conv rel RMS err"], rows)

    def model_run(dtype, reduced):
        def run():
            with torchsparse.config(reduced_precision_reduction=reduced):
                if dtype == torch.float32:
                    return fused(fresh())
                with torch.autocast("cpu", dtype=dtype):
                    return fused(fresh())

        return run

    reference = fused(fresh()).argmax(1)
    model_ms = interleaved_medians_ms({name: model_run(d, r) for name, d, r in PRECISIONS}, runs)
    rows = []
    for name, d, r in PRECISIONS:
        agree = (model_run(d, r)().float().argmax(1) == reference).double().mean().item()
        rows.append([name, model_ms[name], model_ms["float32"] / model_ms[name], 100 * agree])
    print("\nfused MinkUNet under torch.autocast('cpu', dtype) (RANDOM weights: argmax agreement checks numerics only)")
    print_table(["dtype", "median ms", "speed-up over float32", "% voxels with the float32 argmax"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cr", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="copies of the scan in the batch")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds; medians are printed")
    parser.add_argument("--no-tune", action="store_true", help="skip the tuned-plan row")
    parser.add_argument("--precision", action="store_true", help="also bfloat16 / float16 against float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU table (dataflows x dtypes, batch 1 and --batch rotated copies)")
    args = parser.parse_args()
    if args.device == "cuda":
        gpu_main(args)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    points = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    scan = sparse_collate([quantize_scan(points)] * args.batch)
    net = MinkUNet(cr=args.cr).eval()
    fused = spnn.fuse(net)
    twin = spconv_twin(net)

    def fresh():  # a new tensor each run: kernel maps are built inside the timed forward, as in inference
        return SparseTensor(scan.feats, scan.coords)

    def with_config(forward, **settings):
        def run():
            with torchsparse.config(**settings):
                return forward()

        return run

    forwards = {
        "torchsparse fused model (auto)": lambda: fused(fresh()),
        "torchsparse unfused (auto)": lambda: net(fresh()),
        "torchsparse unfused (gather_scatter)": with_config(lambda: net(fresh()), dataflow="gather_scatter"),
    }
    with torch.inference_mode():
        expected = net(fresh())
        error = ((fused(fresh()) - expected).abs().max() / expected.abs().max()).item()
        print(f"fused model vs unfused: max abs difference / max abs output = {error:.1e}")
        if not args.no_tune:
            plan = torchsparse.tune(net, (fresh(),), path=RESULTS / "minkunet_plan.json")
            forwards["torchsparse unfused (tuned plan)"] = with_config(lambda: net(fresh()), plan=plan)
        spconv_threads = DEFAULT_THREADS
        if twin is not None:
            import spconv.pytorch as spconv

            shape = [(int(v) + 16) // 16 * 16 for v in scan.coords[:, 1:].max(0).values]

            def run_spconv():
                return twin(spconv.SparseConvTensor(scan.feats, scan.coords, shape, args.batch))

            # spconv's CPU kernels race with more than one thread (docs/conventions.md §5): one thread for the comparison,
            # its default thread count for timing.
            torch.set_num_threads(1)
            error = (run_spconv() - expected).abs().max().item()
            torch.set_num_threads(args.threads)
            print(f"spconv twin max abs difference to ours (1 thread): {error:.1e}")

            def timed_spconv():
                torch.set_num_threads(spconv_threads)
                try:
                    return run_spconv()
                finally:
                    torch.set_num_threads(args.threads)

            forwards[f"spconv 2.x ({spconv_threads} threads)"] = timed_spconv
        ms = interleaved_medians_ms(forwards, args.runs)
        memory = {name: peak_memory_mb(forward) for name, forward in forwards.items()}
        stages = {
            "fused model": breakdown(forwards["torchsparse fused model (auto)"], "fused"),
            "unfused (auto)": breakdown(forwards["torchsparse unfused (auto)"], "auto"),
            "unfused gather_scatter": breakdown(forwards["torchsparse unfused (gather_scatter)"], "gather_scatter"),
        }
        macs = count_macs(net, fresh())
        base = ms["torchsparse fused model (auto)"]
        rows = [[name, t, t / base, 2 * macs / t / 1e6, memory[name]] for name, t in ms.items()]
        print(f"\nMinkUNet cr={args.cr}, {len(scan)} voxels ({args.batch} scan(s)), {args.threads} threads, float32, "
              f"{macs / 1e9:.1f} GMAC in its convolutions, medians of {args.runs} interleaved rounds")
        print_table(["network", "median ms", "x fused model time", "GFLOP/s (conv MACs / forward time)",
                     "peak RSS added, MiB"], rows)
        print("\nbreakdown (profiler self time, ms; profiling adds overhead)")
        names = list(stages["fused model"])
        print_table(["stage", *stages], [[n, *(s[n] for s in stages.values())] for n in names])
        if args.precision:
            precision(scan, fused, fresh, args.runs, args.threads)
    write_csv(RESULTS / "bench_minkunet.csv", ["network", "median_ms", "ratio", "gflops", "peak_rss_mib"], rows)
    bar_chart(RESULTS / "bench_minkunet.png", [r[0] for r in rows[1:]], {"time / fused model": [r[2] for r in rows[1:]]},
              "time relative to the fused model (x)", f"MinkUNet cr={args.cr} forward on CPU")


def rotated_scans(points: np.ndarray, copies: int) -> SparseTensor:
    """`copies` copies of the scan, copy b rotated by 2 pi b / copies about the z axis, as one batch."""
    scans = []
    for b in range(copies):
        angle = 2 * np.pi * b / copies
        c, s = np.cos(angle), np.sin(angle)
        turned = points.copy()
        turned[:, 0], turned[:, 1] = c * points[:, 0] - s * points[:, 1], s * points[:, 0] + c * points[:, 1]
        scans.append(quantize_scan(turned))
    return sparse_collate(scans)


GPU_DATAFLOWS = ("auto", "implicit_gemm_sorted", "implicit_gemm", "gather_scatter")


def _gpu_forwards(net, twin, feats, coords, batch: int, dtype: torch.dtype) -> dict:
    """One forward per row: our dataflows under torch.autocast (float32: none), and spconv's twin in `dtype`."""

    def ours(dataflow: str):
        def run():
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32), \
                    torchsparse.config(dataflow=dataflow):
                return net(SparseTensor(feats, coords))

        return run

    forwards = {f"torchsparse {dataflow}": ours(dataflow) for dataflow in GPU_DATAFLOWS}
    if twin is not None:
        import spconv.pytorch as spconv

        shape = [(int(v) + 16) // 16 * 16 for v in coords[:, 1:].max(0).values]
        twin_in_dtype, feats_in_dtype = copy.deepcopy(twin).to(dtype), feats.to(dtype)

        def run_spconv():
            return twin_in_dtype(spconv.SparseConvTensor(feats_in_dtype, coords, shape, batch))

        forwards["spconv 2.x (CUDA)"] = run_spconv
    return forwards


def gpu_main(args) -> None:
    """MinkUNet on the GPU: ms per forward for each dataflow and dtype (float32, and float16 / bfloat16 under
    torch.autocast), batch 1 and `args.batch` rotated copies, with spconv's CUDA build where it imports.

    Timed with torch.utils.benchmark.Timer (it synchronises CUDA), medians; every forward builds its kernel maps
    from a fresh tensor. The first call of each row is untimed: it runs Triton's autotuning and the measured
    "auto" choice. spconv's twin gets the same weights (float32 and autocast alike).
    """
    device = torch.device("cuda")
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    points = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    net = MinkUNet(cr=args.cr).eval().to(device)
    twin = None if spconv_unavailable(device) else spconv_twin(net.cpu()).to(device)
    net = net.to(device)
    print(f"MinkUNet cr={args.cr} on {device_description(device)}; spconv: {spconv_unavailable(device) or 'CUDA build'}")
    rows = []
    for batch in sorted({1, args.batch}):
        scan = rotated_scans(points, batch)
        feats, coords = scan.feats.to(device), scan.coords.to(device)
        with torch.inference_mode():
            macs = count_macs(net, SparseTensor(feats, coords))
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            forwards = _gpu_forwards(net, twin, feats, coords, batch, dtype)
            with torch.inference_mode():
                for name, run in list(forwards.items()):
                    try:
                        run()  # Triton autotuning, the measured auto choice, spconv's own tuning
                    except Exception as error:  # a peer that cannot run this dtype is reported, not fatal
                        if not name.startswith("spconv"):
                            raise
                        print(f"{name}, {dtype}: {type(error).__name__}: {error}")
                        del forwards[name]
                ms = {
                    name: Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=1.0).median * 1e3
                    for name, run in forwards.items()
                }
            base = ms["torchsparse auto"]
            for name, t in ms.items():
                rows.append([f"batch {batch}", str(dtype).removeprefix("torch."), name, t, t / base,
                             2 * macs / t / 1e9])
    print(f"\nms per forward (medians; {len(points):,} points per scan)")
    print_table(["batch", "dtype", "network", "median ms", "x auto", "TFLOP/s (conv MACs)"], rows, device=device)
    write_csv(RESULTS / "bench_minkunet_cuda.csv", ["batch", "dtype", "network", "median_ms", "ratio", "tflops"], rows)
    labels = [f"{r[0]} {r[1]} {r[2].removeprefix('torchsparse ')}" for r in rows]
    bar_chart(RESULTS / "bench_minkunet_cuda.png", labels, {"ms per forward": [r[3] for r in rows]},
              "ms per forward", f"MinkUNet cr={args.cr} on {torch.cuda.get_device_name(device)}")


if __name__ == "__main__":
    main()
