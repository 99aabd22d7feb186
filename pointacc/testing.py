"""Fixed simulation cases for golden-report regression tests (tests/pointacc/golden/), refreshed only by
`python tools/refresh_pointacc_golden.py`."""

from __future__ import annotations

import numpy as np

from pointacc.config import Config, load_config
from pointacc.networks import builtin
from pointacc.units.mapping import kernel_map
from pointacc.workload import Workload


def synthetic_trace(num_voxels: int = 3000, seed: int = 0) -> Workload:
    """A small sparse U-Net-like trace with real maps from the Mapping Unit: subm k3, strided k2 s2, subm k3 at
    stride 2, transposed k2 s2 back, and a classifier."""
    rng = np.random.default_rng(seed)
    fine = np.unique(
        np.concatenate([np.zeros((num_voxels, 1), np.int64), rng.integers(0, 40, (num_voxels, 3))], 1), axis=0
    ).astype(np.int32)
    coarse = np.unique(np.concatenate([fine[:, :1], fine[:, 1:] // 2], 1), axis=0).astype(np.int32)
    arrays = {"coords.s1": fine, "coords.s2": coarse}
    for name, src, dst, kernel, stride in (
        ("s1.k3", fine, fine, (3, 3, 3), (1, 1, 1)),
        ("s1.k2.s2", fine, coarse, (2, 2, 2), (2, 2, 2)),
        ("s2.k3", coarse, coarse, (3, 3, 3), (1, 1, 1)),
    ):
        arrays[f"{name}.in"], arrays[f"{name}.out"], arrays[f"{name}.sizes"], _ = kernel_map(
            src, dst, kernel, stride
        )
    arrays["s1.k2.s2.T.in"], arrays["s1.k2.s2.T.out"] = arrays["s1.k2.s2.out"], arrays["s1.k2.s2.in"]
    arrays["s1.k2.s2.T.sizes"] = arrays["s1.k2.s2.sizes"]
    n1, n2 = len(fine), len(coarse)

    def kmap(name, src, dst, n_in, n_out, kernel, stride, subm):
        return {
            "op": "kmap",
            "name": f"kmap.{name}",
            "map": name,
            "n_in": n_in,
            "n_out": n_out,
            "kernel_size": list(kernel),
            "stride": list(stride),
            "submanifold": subm,
            "coords_in": src,
            "coords_out": dst,
        }

    def conv(name, map_name, n_in, n_out, c_in, c_out, volume, transposed=False):
        return {
            "op": "sparse_conv",
            "name": name,
            "map": map_name,
            "n_in": n_in,
            "n_out": n_out,
            "c_in": c_in,
            "c_out": c_out,
            "kernel_volume": volume,
            "transposed": transposed,
        }

    ops = [
        {"op": "sort", "name": "sort.s1", "n": n1},
        kmap("s1.k3", "coords.s1", "coords.s1", n1, n1, (3, 3, 3), (1, 1, 1), True),
        conv("stem", "s1.k3", n1, n1, 4, 32, 27),
        {"op": "downsample", "name": "downsample.s2", "n_in": n1, "n_out": n2, "stride": [2, 2, 2]},
        kmap("s1.k2.s2", "coords.s1", "coords.s2", n1, n2, (2, 2, 2), (2, 2, 2), False),
        conv("down", "s1.k2.s2", n1, n2, 32, 64, 8),
        kmap("s2.k3", "coords.s2", "coords.s2", n2, n2, (3, 3, 3), (1, 1, 1), True),
        conv("block", "s2.k3", n2, n2, 64, 64, 27),
        conv("up", "s1.k2.s2.T", n2, n1, 64, 32, 8, transposed=True),
        {"op": "linear", "name": "head.0", "n": n1, "c_in": 32, "c_out": 64},
        {"op": "linear", "name": "head.1", "n": n1, "c_in": 64, "c_out": 19},
    ]
    return Workload("synthetic_unet", ops, arrays, {"seed": seed})


def golden_cases() -> dict[str, tuple[Config, Workload]]:
    """name -> (config, workload) of every golden report."""
    server, edge = load_config("pointacc"), load_config("pointacc_edge")
    return {
        "synthetic_unet_pointacc": (server, synthetic_trace()),
        "synthetic_unet_edge_offset_fifo": (
            edge.replace(**{"memory.gather_order": "offset", "memory.policy": "fifo", "run.overlap": False}),
            synthetic_trace(),
        ),
        "pointnet_pointacc": (server, builtin("pointnet")),
        "pointnet2_ssg_edge": (edge, builtin("pointnet2_ssg")),
        "dgcnn_pointacc_ws_grouped": (
            server.replace(**{"array.dataflow": "ws", "run.grouped": True}),
            builtin("dgcnn"),
        ),
    }


def golden_summary(config: Config, workload: Workload) -> dict:
    """The parts of a summary that golden files pin (everything except the config echo)."""
    from pointacc.simulate import simulate

    summary = simulate(config, workload).summary()
    summary.pop("config")
    return summary
