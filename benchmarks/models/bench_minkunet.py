"""End-to-end forward of MinkUNet (torchsparse.models) vs the same network built from spconv layers.

MinkUNet (REFERENCE.md §2; widths [32, 32, 64, 128, 256, 256, 128, 96, 96] x cr): a stem of two 3x3x3
submanifold convs, four stages [k2 s2 conv, 2 residual blocks], four up stages [k2 s2 transposed conv, concat
skip, 2 residual blocks] and a linear classifier. Both libraries get the same weights; outputs are compared with
one thread before timing. The breakdown profiles our network once per dataflow.

Usage:
    python benchmarks/models/bench_minkunet.py [--cr 1.0] [--threads 2] [--batch 1]
"""

import argparse
import pathlib

import numpy as np
import torch
from torch import nn

import torchsparse
import torchsparse.nn as spnn
from torchsparse import SparseTensor
from torchsparse.models import MinkUNet
from torchsparse.models.minkunet import ResidualBlock
from torchsparse.testing import quantize_scan
from torchsparse.testing.benchmark import bar_chart, median_ms, print_table, to_spconv_weight, write_csv
from torchsparse.utils import sparse_collate

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


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
    from torchsparse.conv_output import conv_output

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


def breakdown(net, x_fn, dataflow: str) -> dict[str, float]:
    """Milliseconds per stage from the profiler (self CPU time of our ops and of everything else)."""
    groups = {
        "kernel maps": ("torchsparse::kernel_map", "torchsparse::kernel_map_pairs", "torchsparse::strided_coords",
                        "torchsparse::pack_coords", "aten::sort", "aten::index_put", "aten::repeat_interleave"),
        "gather": ("torchsparse::gather",),
        "GEMM": ("aten::mm", "aten::addmm"),
        "scatter": ("torchsparse::scatter",),
        "fused conv (gather+GEMM+scatter)": ("torchsparse::conv3d_fused",),
    }
    with torchsparse.config(dataflow=dataflow), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(x_fn())
    out = {name: 0.0 for name in groups}
    total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        for name, keys in groups.items():
            if event.key in keys:
                out[name] += event.self_cpu_time_total / 1e3
    out["other (norm, activations, cat, ...)"] = total / 1e3 - sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cr", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="copies of the scan in the batch")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    points = np.fromfile(ROOT / "assets" / "semantickitti" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    scan = sparse_collate([quantize_scan(points)] * args.batch)
    net = MinkUNet(cr=args.cr).eval()
    twin = spconv_twin(net)

    def fresh():  # a new tensor each run: kernel maps are built inside the timed forward, as in inference
        return SparseTensor(scan.feats, scan.coords)

    rows = []
    with torch.inference_mode():
        ours_ms = median_ms(lambda: net(fresh()), args.runs)
        rows.append(["torchsparse (auto)", ours_ms, 1.0])
        with torchsparse.config(dataflow="gather_scatter"):
            gs_ms = median_ms(lambda: net(fresh()), args.runs)
        rows.append(["torchsparse (gather_scatter)", gs_ms, gs_ms / ours_ms])
        plan = torchsparse.tune(net, (fresh(),), path=RESULTS / "minkunet_plan.json")
        with torchsparse.config(plan=plan):
            tuned_ms = median_ms(lambda: net(fresh()), args.runs)
        rows.append(["torchsparse (tuned plan)", tuned_ms, tuned_ms / ours_ms])
        if twin is not None:
            import spconv.pytorch as spconv

            shape = [(int(v) + 16) // 16 * 16 for v in scan.coords[:, 1:].max(0).values]
            run = lambda: twin(spconv.SparseConvTensor(scan.feats, scan.coords, shape, args.batch))  # noqa: E731
            torch.set_num_threads(1)
            error = (run() - net(fresh())).abs().max().item()
            torch.set_num_threads(args.threads)
            print(f"spconv twin max abs difference to ours (1 thread): {error:.1e}")
            spconv_ms = median_ms(run, args.runs)
            rows.append(["spconv 2.x", spconv_ms, spconv_ms / ours_ms])
        stages = {flow: breakdown(net, fresh, flow) for flow in ("fused", "gather_scatter")}
        macs = count_macs(net, fresh())
    print(f"\nMinkUNet cr={args.cr}, {len(scan)} voxels ({args.batch} scan(s)), {args.threads} threads, float32, "
          f"{macs / 1e9:.1f} GMAC in its convolutions")
    print_table(["network", "median ms", "x torchsparse time", "GFLOP/s (convolution MACs / forward time)"],
                [[*row, 2 * macs / row[1] / 1e6] for row in rows])
    names = list(stages["fused"])
    print("\nbreakdown (profiler self time, ms; profiling adds overhead)")
    print_table(["stage", "fused", "gather_scatter"], [[n, stages["fused"][n], stages["gather_scatter"][n]] for n in names])
    write_csv(RESULTS / "bench_minkunet.csv", ["network", "median_ms", "ratio"], rows)
    bar_chart(RESULTS / "bench_minkunet.png", [r[0] for r in rows[1:]], {"time / torchsparse": [r[2] for r in rows[1:]]},
              "time relative to torchsparse (x)", f"MinkUNet cr={args.cr} forward on CPU")


if __name__ == "__main__":
    main()
