"""bev_pool at BEVFusion's size: torchsparse with and without precomputation vs index_add_ and the LSS cumsum trick.

Input: B = 1, 6 cameras x 118 depths x 32 x 88 = 1,993,728 frustum points, 80 channels float32, grid Z = 1,
X = Y = 360 (0.3 m cells over [-54, 54] m). Two geometries: "frustum", the cells of a nuScenes-like 6-camera ring
(torchsparse.testing.bev_pool_references.frustum_bev_coords: about 12 % of the points fall outside the grid,
runs of up to several hundred points near the cameras), and "uniform", cells drawn uniformly at random (including
~10 % outside). Peers run in the same process on the same input; every result is checked against the index_add_
oracle before timing; medians of >= 5 runs.

Rows: plan (sort + intervals, the part a cache saves), ours recomputed (plan + pooling, as the released BEVFusion
does every forward), ours precomputed (a BEVPoolCache hit: key comparison + pooling), index_add_ (the oracle),
cumsum (the LSS trick), and the backward passes of ours and of the oracle.

With --device cuda everything runs on the GPU (the Timer synchronises around every call); --dtype times each of
float32 / float16 / bfloat16 features. Before timing, every result's max abs error against a float64 index_add_
is printed (on a GPU index_add_ adds with atomics, in any order, so it is no longer bitwise equal to ours).

Usage:
    python benchmarks/ops/bench_bev_pool.py [--threads 2] [--channels 80] [--runs 7] [--device cuda]
        [--dtype float32 float16 bfloat16] [--cameras 6]
"""

import argparse
import pathlib

import torch

from torchsparse.nn import BEVPoolCache
from torchsparse.ops.bev_pool import bev_pool, bev_pool_apply, bev_pool_plan
from torchsparse.testing.benchmark import bar_chart, device_description, median_ms, print_table, write_csv
from torchsparse.testing.bev_pool_references import cumsum_bev_pool, frustum_bev_coords, reference_bev_pool

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def uniform_coords(n: int, grid, seed: int = 0) -> torch.Tensor:
    """int32 (n, 4) (x, y, z, b) uniform over the grid widened by 5 % per side in x and y (those fall outside)."""
    g = torch.Generator().manual_seed(seed)
    _, nx, ny = grid
    x = torch.randint(-nx // 20, nx + nx // 20, (n,), generator=g)
    y = torch.randint(-ny // 20, ny + ny // 20, (n,), generator=g)
    zeros = torch.zeros(n, dtype=torch.int64)
    return torch.stack([x, y, zeros, zeros], 1).int()


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def max_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return (out.double() - reference).abs().max().item()


def time_geometry(coords, feats, batch_size, grid, key, runs) -> tuple[dict[str, float], int, int]:
    """Prints every implementation's error against a float64 oracle on one geometry, then times them (ms)."""
    plan = bev_pool_plan(coords, batch_size, grid)
    exact = reference_bev_pool(feats.double(), coords, batch_size, grid)
    errors = {
        "ours": max_error(bev_pool(feats, coords, batch_size, grid), exact),
        "index_add_": max_error(reference_bev_pool(feats, coords, batch_size, grid), exact),
        "cumsum": max_error(cumsum_bev_pool(feats, coords, batch_size, grid), exact),
    }
    cache = BEVPoolCache()
    cache.plan(coords, batch_size, grid, key)
    grad = torch.randn(exact.shape, device=feats.device).to(feats.dtype)
    del exact
    leaf = feats.detach().requires_grad_()
    ref_out = reference_bev_pool(leaf, coords, batch_size, grid)
    our_grad = torch.ops.torchsparse.bev_pool_backward(grad, *plan[:4], len(feats))
    ref_grad = torch.autograd.grad(ref_out, leaf, grad, retain_graph=True)[0]
    errors["backward ours vs index_add_"] = max_error(our_grad, ref_grad.double())
    del our_grad, ref_grad
    print(f"  {feats.dtype}: max abs error vs float64 index_add_: "
          + ", ".join(f"{name} {error:.1e}" for name, error in errors.items()))
    times = {
        "plan": median_ms(lambda: bev_pool_plan(coords, batch_size, grid), runs),
        "ours recomputed": median_ms(lambda: bev_pool(feats, coords, batch_size, grid), runs),
        "ours precomputed": median_ms(
            lambda: bev_pool_apply(feats, cache.plan(coords, batch_size, grid, key)), runs
        ),
        "index_add_": median_ms(lambda: reference_bev_pool(feats, coords, batch_size, grid), runs),
        "cumsum": median_ms(lambda: cumsum_bev_pool(feats, coords, batch_size, grid), runs),
        "backward ours": median_ms(
            lambda: torch.ops.torchsparse.bev_pool_backward(grad, *plan[:4], len(feats)), runs
        ),
        "backward index_add_": median_ms(
            lambda: torch.autograd.grad(ref_out, leaf, grad, retain_graph=True), runs
        ),
    }
    return times, len(plan.order), len(plan.cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=80)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"])
    parser.add_argument("--cameras", type=int, default=6, help="cameras of the frustum ring (fewer: a smaller input)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs an NVIDIA GPU")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    frustum, batch_size, grid = frustum_bev_coords(cameras=args.cameras)
    geometries = {"frustum": frustum.to(device), "uniform": uniform_coords(len(frustum), grid).to(device)}
    g = torch.Generator().manual_seed(0)
    feats32 = torch.randn(len(frustum), args.channels, generator=g)
    # Stand-ins for the camera / lidar / augmentation matrices that key the cache.
    key = tuple(m.to(device) for m in (torch.randn(1, 6, 4, 4, generator=g), torch.randn(1, 6, 4, 4, generator=g),
                                        torch.randn(1, 4, 4)))

    header = ["geometry", "dtype", "kept", "intervals", "case", "ms", "index_add_ / case", "cumsum / case"]
    rows = []
    labels = []
    chart = {"ours recomputed": [], "ours precomputed": [], "index_add_": [], "cumsum": []}
    for dtype_name in args.dtype:
        feats = feats32.to(device, DTYPES[dtype_name])
        for name, coords in geometries.items():
            try:
                times, kept, intervals = time_geometry(coords, feats, batch_size, grid, key, args.runs)
            except (TypeError, RuntimeError, NotImplementedError) as error:  # e.g. a dtype an op does not take
                print(f"  {name} {dtype_name}: not run ({type(error).__name__}: {str(error).strip()[:200]})")
                continue
            for case, ms in times.items():
                backward = case.startswith("backward")
                peer = times["backward index_add_" if backward else "index_add_"]
                rows.append(
                    [name, dtype_name, kept, intervals, case, ms, peer / ms, "" if backward else times["cumsum"] / ms]
                )
            labels.append(f"{name} {dtype_name}")
            for series, values in chart.items():
                values.append(times[series])

    where = device_description(device).split(",")[0]
    print(
        f"bev_pool: B={batch_size}, N={len(frustum):,} points, C={args.channels}, grid (Z, X, Y)={grid}, on "
        f"{args.device} ({where}), {torch.get_num_threads()} threads"
    )
    print_table(header, rows, device=device)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_csv(RESULTS / f"bench_bev_pool{suffix}.csv", header, rows)
    bar_chart(
        RESULTS / f"bench_bev_pool{suffix}.png",
        labels,
        chart,
        "ms (lower is better)",
        f"bev_pool, {len(frustum):,} points x {args.channels} ch ({where})",
    )


if __name__ == "__main__":
    main()
