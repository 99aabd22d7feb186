from pathlib import Path

import numpy as np
import pytest

from pointacc.config import Config
from pointacc.units import mapping

SCAN = Path(__file__).resolve().parents[2] / "assets" / "semantickitti" / "000000.bin"


def _engine_scan():
    from torchsparse.datasets.semantic_kitti import read_scan, voxelize_scan

    x, _, _ = voxelize_scan(read_scan(SCAN))
    return x


def _grouped(in_rows, out_rows, sizes):
    """Pairs as a set per offset."""
    offsets = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((in_rows, out_rows, offsets))
    return offsets[order], np.asarray(out_rows)[order], np.asarray(in_rows)[order]


@pytest.mark.parametrize(
    "kernel_size, stride", [((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (2, 2, 2))]
)
def test_merge_kernel_map_equals_the_engine_on_the_real_scan(kernel_size, stride):
    from torchsparse.conv_output import conv_output

    x = _engine_scan()
    out = conv_output(x, kernel_size, stride, (1, 1, 1), (0, 0, 0), False, False, "minkowski")
    engine = out.kmap
    in_rows, out_rows, sizes, steps = mapping.kernel_map(
        x.coords.numpy(), out.coords.numpy(), kernel_size, stride
    )
    assert len(sizes) == np.prod(kernel_size)
    assert np.array_equal(sizes, engine.sizes.numpy())
    ours = _grouped(in_rows, out_rows, sizes)
    theirs = _grouped(engine.in_rows.numpy(), engine.out_rows.numpy(), engine.sizes.numpy())
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert np.count_nonzero(sizes) == len(sizes) and int(sizes.sum()) >= len(x)  # every offset finds pairs
    assert (steps >= sizes).all() and (steps <= len(x) + len(out.coords)).all()


def test_offsets_follow_the_engine_order():
    odd = mapping.kernel_offsets((3, 3, 3))
    assert (
        odd[0].tolist() == [-1, -1, -1] and odd[1].tolist() == [0, -1, -1] and odd[13].tolist() == [0, 0, 0]
    )
    even = mapping.kernel_offsets((2, 2, 2))
    assert even.tolist()[:3] == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert mapping.kernel_offsets((3, 3, 3), (2, 2, 2))[0].tolist() == [-2, -2, -2]


def test_kmap_cost_uses_symmetry_and_real_steps():
    rng = np.random.default_rng(0)
    coords = np.unique(np.concatenate([np.zeros((3000, 1), int), rng.integers(0, 30, (3000, 3))], 1), axis=0)
    coords = coords.astype(np.int32)
    op = {
        "op": "kmap",
        "name": "k",
        "map": "m",
        "n_in": len(coords),
        "n_out": len(coords),
        "kernel_size": [3, 3, 3],
        "stride": [1, 1, 1],
        "submanifold": True,
    }
    config = Config()
    trace = mapping.kmap(config, op, coords, coords)
    analytic = mapping.kmap(config, op)
    assert trace.detail["searched_offsets"] == 14
    assert 0 < trace.cycles <= analytic.cycles
    full = mapping.kmap(config.replace(**{"mapping.symmetric": False}), op, coords, coords)
    assert full.detail["searched_offsets"] == 27 and full.cycles > trace.cycles


def test_sort_and_sampling_costs_grow_with_size():
    config = Config()
    assert mapping.sort(config, 0).cycles == 0
    sizes = [10, 1_000, 100_000]
    assert [mapping.sort(config, n).cycles for n in sizes] == sorted(
        mapping.sort(config, n).cycles for n in sizes
    )
    fps = mapping.farthest_point_sampling(config, 1024, 512)
    assert fps.cycles == 512 * (1024 // config.mapping.distance_units + 4)
    knn = mapping.neighbours(config, {"op": "knn", "n_query": 1024, "n_points": 1024, "k": 20})
    assert knn.actions["distance"] == 1024 * 1024


def test_bad_coordinates_are_rejected():
    coords = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="duplicate"):
        mapping.kernel_map(coords, coords, (3, 3, 3))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        mapping.kernel_map(coords[:, :3], coords, (3, 3, 3))


def test_keys_stream_from_dram_when_the_coordinate_buffer_is_small():
    op = {"op": "kmap", "name": "k", "map": "m", "n_in": 100_000, "n_out": 100_000, "kernel_size": [3, 3, 3],
          "stride": [1, 1, 1], "submanifold": True}
    small = mapping.kmap(Config().replace(**{"memory.coord_buffer_kb": 64}), op)
    large = mapping.kmap(Config().replace(**{"memory.coord_buffer_kb": 4096}), op)
    assert small.dram_read_bytes == 14 * 200_000 * 8 and large.dram_read_bytes == 0
    assert small.cycles == large.cycles


def test_kmap_takes_one_dilation_or_one_per_axis():
    coords = np.array([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 4, 4, 4]], np.int32)
    op = {"op": "kmap", "name": "k", "map": "m", "n_in": 4, "n_out": 4, "kernel_size": 3, "stride": 1,
          "submanifold": False, "dilation": 2}
    one = mapping.kmap(Config(), op, coords, coords)
    per_axis = mapping.kmap(Config(), {**op, "dilation": [2, 2, 2]}, coords, coords)
    # 4 pairs at offset 0, and both directions of the pairs among the first three sites (2 apart per axis)
    assert one.detail == per_axis.detail and one.detail["pairs"] == 4 + 2 * 3
