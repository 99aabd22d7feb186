"""tools/export_workload.py on a crop of the real scan: the trace holds the engine's own kernel maps."""

import contextlib
import io
import itertools
import math
import os

import numpy as np
import pytest
import torch

import torchsparse.nn as spnn
from pointacc.workload import load_workload
from torchsparse import models
from torchsparse.conv_output import centred_base, conv_output
from torchsparse.datasets.semantic_kitti import read_scan, voxelize_scan
from torchsparse.tools import export_workload

MINKUNET = "SemanticKITTI_val_MinkUNet@29GMACs"


def _crop(folder, points: int):
    path = folder / f"crop{points}.bin"
    read_scan(export_workload.SAMPLE)[:points].tofile(path)
    return path


def _export(folder, model: str, scan) -> tuple:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert export_workload.main(["--model", model, "--input", str(scan), "-o", str(folder)]) == 0
    return load_workload(folder), out.getvalue()


@pytest.fixture(scope="module")
def minkunet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    scan = _crop(folder, 20_000)
    workload, printed = _export(folder / "trace", MINKUNET, scan)
    return workload, printed, scan


def _engine_maps(model: torch.nn.Module, scan) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Conv3d module name -> (in_rows, out_rows, sizes) of the map that conv used, from our own pass."""
    x, _, _ = voxelize_scan(read_scan(scan), 0.05)
    maps, handles = {}, []

    def hook(name):
        def record(module, inputs, output):
            kmap = conv_output(inputs[0], module.kernel_size, module.stride, module.dilation, module.padding,
                               module.transposed or module.generative, module.generative,
                               module.downsample_mode).kmap
            maps[name] = tuple(t.numpy() for t in (kmap.in_rows, kmap.out_rows, kmap.sizes))
        return record

    for name, module in model.named_modules():
        if isinstance(module, spnn.Conv3d):
            handles.append(module.register_forward_hook(hook(name)))
    with torch.inference_mode():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return maps


def _reference_pairs(coords_in: np.ndarray, coords_out: np.ndarray, kernel_size, stride) -> set:
    """All (input row, output row) with coords_in = stride * coords_out + base + offset, offset in the kernel
    window: a brute-force map from the coordinates alone, independent of the engine."""
    shift = 4
    size = int(max(coords_in.max(), stride[0] * coords_out.max())) + 2 * shift + 4

    def pack(c):
        c = c.astype(np.int64)
        return ((c[:, 0] * size + c[:, 1] + shift) * size + c[:, 2] + shift) * size + c[:, 3] + shift

    keys = pack(coords_in)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    base = centred_base(tuple(kernel_size), (1, 1, 1))
    pairs = set()
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        target = coords_out.astype(np.int64).copy()
        target[:, 1:] = target[:, 1:] * np.asarray(stride) + np.asarray(base) + np.asarray(offset)
        query = pack(target)
        where = np.clip(np.searchsorted(sorted_keys, query), 0, len(keys) - 1)
        found = sorted_keys[where] == query
        pairs.update(zip(order[where[found]].tolist(), np.nonzero(found)[0].tolist()))
    return pairs


def test_one_sparse_conv_per_conv3d_call(minkunet):
    workload, _, _ = minkunet
    convs = [op for op in workload.ops if op["op"] == "sparse_conv"]
    model = models.get_model(MINKUNET)
    modules = [name for name, m in model.named_modules() if isinstance(m, spnn.Conv3d)]
    # stem 2; stage1 down + 2 blocks of 2 (same width) = 5; stages 2-4 add a 1x1 shortcut = 6 each;
    # up stages: deconv + block with 1x1 shortcut (3) + block (2) = 6 each.
    assert len(modules) == 2 + 5 + 3 * 6 + 4 * 6 == 49
    assert sorted(op["name"] for op in convs) == sorted(modules)
    assert [op["layer"] for op in convs] == [op["name"] for op in convs]
    assert sum(op["transposed"] for op in convs) == 4
    for op in convs:
        module = model.get_submodule(op["name"])
        assert (op["c_in"], op["c_out"]) == (module.in_channels, module.out_channels)
        assert op["kernel_volume"] == math.prod(module.kernel_size)


def test_pairs_are_the_engines_maps(minkunet):
    workload, _, scan = minkunet
    engine = _engine_maps(models.get_model(MINKUNET), scan)
    for op in workload.ops:
        if op["op"] != "sparse_conv":
            continue
        in_rows, out_rows, sizes = workload.pairs(op["map"])
        assert in_rows.dtype == np.int32 and out_rows.dtype == np.int32 and sizes.dtype == np.int64
        expected = engine[op["name"]]
        assert np.array_equal(in_rows, expected[0]) and np.array_equal(out_rows, expected[1])
        assert np.array_equal(sizes, expected[2])
        assert sizes.shape == (op["kernel_volume"],) and sizes.sum() == len(in_rows) == len(out_rows) == op["pairs"]
        assert 0 <= in_rows.min() and in_rows.max() < op["n_in"]
        assert 0 <= out_rows.min() and out_rows.max() < op["n_out"]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for a, b in itertools.pairwise(starts):  # the format's order: ascending output row within an offset
            assert np.all(np.diff(out_rows[a:b]) > 0)


def test_kmaps_match_brute_force_maps_from_the_coordinates(minkunet):
    workload, _, _ = minkunet
    kmaps = [op for op in workload.ops if op["op"] == "kmap"]
    for op in kmaps:
        assert op["dilation"] == [1, 1, 1]
        coords_in, coords_out = workload.arrays[op["coords_in"]], workload.arrays[op["coords_out"]]
        assert (len(coords_in), len(coords_out)) == (op["n_in"], op["n_out"])
        in_rows, out_rows, sizes = workload.pairs(op["map"])
        assert set(zip(in_rows.tolist(), out_rows.tolist())) == _reference_pairs(
            coords_in, coords_out, op["kernel_size"], op["stride"])
        # Every group is one kernel offset, each offset its own group.
        starts = np.concatenate([[0], np.cumsum(sizes)])
        offsets = set()
        for a, b in itertools.pairwise(starts):
            if a == b:
                continue
            delta = coords_in[in_rows[a:b], 1:] - np.asarray(op["stride"]) * coords_out[out_rows[a:b], 1:]
            assert (delta == delta[0]).all()
            offsets.add(tuple(delta[0]))
        assert len(offsets) == np.count_nonzero(sizes)


def test_one_kmap_per_distinct_built_map(minkunet):
    workload, _, _ = minkunet
    kmaps = [op for op in workload.ops if op["op"] == "kmap"]
    convs = [op for op in workload.ops if op["op"] == "sparse_conv"]
    names = [op["map"] for op in kmaps]
    assert len(set(names)) == len(names)
    used = {op["forward_map"] if op["transposed"] else op["map"] for op in convs}
    assert set(names) == used
    # 5 levels x (k3 submanifold, k1 shortcut) + 4 strided maps; the 4 transposed convs reuse the latter.
    assert len(kmaps) == 14
    assert sum(op["submanifold"] for op in kmaps) == 10
    for op in kmaps:
        if op["submanifold"]:
            assert op["n_in"] == op["n_out"] and op["coords_in"] == op["coords_out"]
            assert op["stride"] == [1, 1, 1]
        else:
            assert op["stride"] == [2, 2, 2] and op["kernel_size"] == [2, 2, 2] and op["n_out"] < op["n_in"]
    for op in convs:
        position = workload.ops.index(op)
        source = op["forward_map"] if op["transposed"] else op["map"]
        assert any(k["map"] == source for k in workload.ops[:position] if k["op"] == "kmap")


def test_transposed_convs_use_their_forward_map_swapped(minkunet):
    workload, _, _ = minkunet
    for op in workload.ops:
        if op["op"] == "sparse_conv" and op["transposed"]:
            forward = workload.pairs(op["forward_map"])
            mine = workload.pairs(op["map"])
            assert op["map"] != op["forward_map"]
            assert np.array_equal(mine[0], forward[1]) and np.array_equal(mine[1], forward[0])
            assert np.array_equal(mine[2], forward[2])
            kmap = next(k for k in workload.ops if k["op"] == "kmap" and k["map"] == op["forward_map"])
            assert (kmap["n_in"], kmap["n_out"]) == (op["n_out"], op["n_in"])


def test_coordinate_levels_and_downsamples(minkunet):
    workload, _, scan = minkunet
    x, _, _ = voxelize_scan(read_scan(scan), 0.05)
    levels = {f"coords.s{s}" for s in (1, 2, 4, 8, 16)}
    assert levels == {k for k in workload.arrays if k.startswith("coords.")}
    for name in levels:
        coords = workload.arrays[name]
        assert coords.dtype == np.int32 and coords.ndim == 2 and coords.shape[1] == 4
    assert np.array_equal(workload.arrays["coords.s1"], x.coords.numpy())
    downs = [op for op in workload.ops if op["op"] == "downsample"]
    assert [op["coords_out"] for op in downs] == ["coords.s2", "coords.s4", "coords.s8", "coords.s16"]
    for op in downs:
        assert op["stride"] == [2, 2, 2]
        assert op["n_in"] == len(workload.arrays[op["coords_in"]]) > op["n_out"] == len(workload.arrays[op["coords_out"]])
        # The new level is unique(floor(coords / 2)) of the previous one.
        previous = workload.arrays[op["coords_in"]].copy()
        previous[:, 1:] //= 2
        assert np.array_equal(np.unique(previous, axis=0), np.unique(workload.arrays[op["coords_out"]], axis=0))


def test_linear_records_meta_and_summary(minkunet):
    workload, printed, _ = minkunet
    voxels = workload.meta["num_voxels"]
    linears = [op for op in workload.ops if op["op"] == "linear"]
    # MinkUNet defines point_transforms but never calls them.
    assert [(op["name"], op["n"], op["c_in"], op["c_out"]) for op in linears] == [("classifier.0", voxels, 48, 19)]
    assert workload.meta["model"] == MINKUNET and workload.meta["num_points"] == 20_000
    assert 0 < voxels < 20_000 and workload.meta["torchsparse_version"]
    assert "sparse_conv 49" in printed and "kmap 14" in printed and "downsample 4" in printed
    total = sum(op["pairs"] for op in workload.ops if op["op"] == "sparse_conv")
    assert f"{total:,}" in printed and "trace:" in printed


def test_spvcnn_records_its_point_branch(tmp_path):
    scan = _crop(tmp_path, 8_000)
    workload, _ = _export(tmp_path / "trace", "SemanticKITTI_val_SPVCNN@30GMACs", scan)
    points = workload.meta["num_voxels"]  # one point per voxel, as SPVNAS feeds SPVCNN
    linears = [(op["name"], op["n"], op["c_in"], op["c_out"]) for op in workload.ops if op["op"] == "linear"]
    assert linears == [
        ("point_transforms.0.0", points, 16, 128), ("point_transforms.1.0", points, 128, 64),
        ("point_transforms.2.0", points, 64, 48), ("classifier.0", points, 48, 19),
    ]
    assert sum(op["op"] == "sparse_conv" for op in workload.ops) == 49
    assert sum(op["op"] == "kmap" for op in workload.ops) == 14


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export_workload.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_options_are_argparse_errors(tmp_path, capsys):
    message = _refused(["--input", str(tmp_path / "none.bin"), "-o", str(tmp_path / "trace")], capsys)
    assert f"argument --input: {tmp_path / 'none.bin'} does not exist" in message
    message = _refused(["--voxel-size", "-0.05", "-o", str(tmp_path / "trace")], capsys)
    assert "argument --voxel-size: must be a positive number, got -0.05" in message
    message = _refused(["--model", "nope", "-o", str(tmp_path / "trace")], capsys)
    assert "argument --model: unknown model 'nope'" in message
    assert list(tmp_path.iterdir()) == []


def test_trace_onto_the_scan_is_refused(tmp_path, capsys):
    scan = _crop(tmp_path, 1000)
    before = scan.read_bytes()
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "trace.jsonl").symlink_to(scan)
    message = _refused(["--model", MINKUNET, "--input", str(scan), "-o", str(tmp_path / "trace")], capsys)
    trace = tmp_path / "trace" / "trace.jsonl"
    assert f"argument -o/--output: refusing to write {trace}: it would overwrite the scan {scan}" in message
    assert scan.read_bytes() == before and trace.is_symlink()


def test_a_failed_export_keeps_the_previous_trace(tmp_path, monkeypatch):
    scan = _crop(tmp_path, 1000)
    folder = tmp_path / "trace"
    folder.mkdir()
    (folder / "trace.jsonl").write_text("previous\n")

    def dies_halfway(folder, ops, arrays=None, meta=None):
        (folder / "trace.jsonl").write_text("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_workload, "write_workload", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        export_workload.main(["--model", MINKUNET, "--input", str(scan), "-o", str(folder)])
    assert os.listdir(folder) == ["trace.jsonl"] and (folder / "trace.jsonl").read_text() == "previous\n"
