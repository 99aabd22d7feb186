import json

import numpy as np
import pytest

from pointacc.workload import WorkloadError, load_workload, write_workload


def _write(tmp_path, lines):
    (tmp_path / "trace.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_round_trip(tmp_path):
    ops = [
        {
            "op": "kmap",
            "name": "k",
            "map": "m",
            "n_in": 3,
            "n_out": 3,
            "kernel_size": [3, 3, 3],
            "stride": [1, 1, 1],
            "submanifold": True,
        },
        {
            "op": "sparse_conv",
            "name": "c",
            "map": "m",
            "n_in": 3,
            "n_out": 3,
            "c_in": 4,
            "c_out": 8,
            "kernel_volume": 27,
        },
    ]
    arrays = {
        "m.in": np.array([0, 1, 2], np.int32),
        "m.out": np.array([0, 1, 2], np.int32),
        "m.sizes": np.array([0] * 13 + [3] + [0] * 13),
    }
    workload = load_workload(write_workload(tmp_path, ops, arrays, {"model": "toy"}))
    assert workload.ops == ops and workload.meta == {"model": "toy"}
    assert workload.pairs("m")[2].sum() == 3


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r"trace.jsonl:2: not JSON"),
        (json.dumps({"op": "conv", "name": "x"}), r"trace.jsonl:2: unknown op 'conv'"),
        (
            json.dumps({"op": "linear", "name": "x", "n": 3, "c_in": 4}),
            r"trace.jsonl:2: .*lacks field 'c_out'",
        ),
        (
            json.dumps({"op": "linear", "name": "x", "n": -3, "c_in": 4, "c_out": 2}),
            r":2: .*n must be in \[0, \d+\], got -3",
        ),
        (
            json.dumps({"op": "linear", "name": "a", "n": 3, "c_in": 4, "c_out": 2}),
            r":2: op name 'a' is used twice",
        ),
    ],
)
def test_bad_traces_name_the_line(tmp_path, line, match):
    first = json.dumps({"op": "linear", "name": "a", "n": 3, "c_in": 4, "c_out": 4})
    with pytest.raises(WorkloadError, match=match):
        load_workload(_write(tmp_path, [first, line]))


def test_missing_map_and_bad_topology(tmp_path):
    write_workload(
        tmp_path,
        [
            {
                "op": "sparse_conv",
                "name": "c",
                "map": "absent",
                "n_in": 1,
                "n_out": 1,
                "c_in": 1,
                "c_out": 1,
                "kernel_volume": 1,
            }
        ],
        {"other.sizes": np.array([1])},
    )
    with pytest.raises(WorkloadError, match="refers to map 'absent'"):
        load_workload(tmp_path)
    (tmp_path / "t.csv").write_text("Layer, M, N, K,\nfc, 3, x, 4,\n")
    with pytest.raises(WorkloadError, match=r"t.csv:2: M, N and K must be integers"):
        load_workload(tmp_path / "t.csv")
    with pytest.raises(WorkloadError, match="no trace"):
        load_workload(tmp_path / "nothing")


CONV = {
    "op": "sparse_conv",
    "name": "c",
    "map": "m",
    "n_in": 3,
    "n_out": 3,
    "c_in": 4,
    "c_out": 8,
    "kernel_volume": 27,
}
KMAP = {
    "op": "kmap",
    "name": "k",
    "map": "m",
    "n_in": 3,
    "n_out": 3,
    "kernel_size": [3, 3, 3],
    "stride": [1, 1, 1],
    "submanifold": True,
    "coords_in": "xyz",
    "coords_out": "xyz",
}
MAP = {
    "m.in": np.array([0, 1, 2], np.int32),
    "m.out": np.array([0, 1, 2], np.int32),
    "m.sizes": np.array([0] * 13 + [3] + [0] * 13),
    "xyz": np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]], np.int32),
}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"kernel_size": 2000}, r"kernel_size 2000 gives 8000000000 offsets, more than 4096"),
        ({"kernel_size": [16, 16, 17]}, r"kernel_size \[16, 16, 17\] gives 4352 offsets"),
        ({"kernel_size": [3, 3]}, r"kernel_size must be one integer or a list of 3"),
        ({"kernel_size": 0}, r"kernel_size must be in \[1, 4096\], got 0"),
        ({"stride": [1, 1, 65537]}, r"stride must be in \[1, 65536\], got 65537"),
        ({"dilation": [1, 0, 1]}, r"dilation must be in \[1, 65536\], got 0"),
        ({"n_in": 2.0}, r"n_in must be an integer, got 2.0"),
        ({"n_in": True}, r"n_in must be an integer, got True"),
        ({"n_in": 2**31}, r"n_in must be in \[0, 2147483647\], got 2147483648"),
        ({"submanifold": 1}, r"submanifold must be true or false, got 1"),
        ({"map": ["m"]}, r"map must be a non-empty string, got \['m'\]"),
        ({"coords_in": 3}, r"coords_in must be a non-empty string, got 3"),
        ({"kernel_volume": 8}, r"kernel_volume 8 is not the product of kernel_size \[3, 3, 3\]"),
    ],
)
def test_bad_kmap_fields_are_named(tmp_path, change, match):
    with pytest.raises(WorkloadError, match=r"trace.jsonl:1: kmap record 'k': " + match):
        load_workload(_write(tmp_path, [json.dumps({**KMAP, **change})]))


@pytest.mark.parametrize(
    "record, match",
    [
        ({**CONV, "c_in": 2**20 + 1}, r"c_in must be in \[0, 1048576\]"),
        ({**CONV, "kernel_volume": 0}, r"kernel_volume must be in \[1, 4096\]"),
        ({**CONV, "transposed": "yes"}, r"transposed must be true or false"),
        (
            {"op": "ball_query", "name": "b", "n_query": 1, "n_points": 1, "radius": -1, "k": 1},
            r"radius must be in",
        ),
        (
            {"op": "ball_query", "name": "b", "n_query": 1, "n_points": 1, "radius": "1", "k": 1},
            r"radius must be a number",
        ),
        (
            {"op": "linear", "name": "l", "n": 1, "c_in": 1, "c_out": 1, "map": {}},
            r"map must be a non-empty string",
        ),
    ],
)
def test_bad_fields_of_other_ops_are_named(tmp_path, record, match):
    with pytest.raises(WorkloadError, match=r"trace.jsonl:1: \w+ record '\w': " + match):
        load_workload(_write(tmp_path, [json.dumps(record)]))


@pytest.mark.parametrize(
    "raw, match",
    [
        (
            b'{"op": "linear", "name": "x", "n": NaN, "c_in": 1, "c_out": 1}',
            r":2: linear record 'x': n must be an integer, got nan",
        ),
        (
            b'{"op": "ball_query", "name": "x", "n_query": 1, "n_points": 1, "radius": Infinity, "k": 1}',
            r":2: .*radius must be a finite number",
        ),
        (b"\xff\xfe{}", r":2: not UTF-8 text \(byte 0\)"),
        (b"[" * 100_000, r":2: not usable JSON \(maximum recursion depth"),
        (
            b'{"op": "sort", "name": "x", "n": ' + b"9" * 5000 + b"}",
            r":2: not usable JSON \(Exceeds the limit",
        ),
        (
            b'{"op": "sort", "name": "x", "n": 1, "pad": "' + b"x" * 2**20 + b'"}',
            r":2: a line is longer than 1048576 bytes",
        ),
    ],
)
def test_unusable_lines_are_named(tmp_path, raw, match):
    first = json.dumps({"op": "linear", "name": "a", "n": 3, "c_in": 4, "c_out": 4}).encode()
    (tmp_path / "trace.jsonl").write_bytes(first + b"\n" + raw + b"\n")
    with pytest.raises(WorkloadError, match=match):
        load_workload(tmp_path)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"m.in": np.array([0, 1, 3], np.int32)},
            r"trace.jsonl:1: kmap 'k': map 'm' has input row 3, not below n_in = 3",
        ),
        (
            {"m.out": np.array([0, 5, 2], np.int32)},
            r"trace.jsonl:1: kmap 'k': map 'm' has output row 5, not below n_out = 3",
        ),
        (
            {"m.sizes": np.array([3])},
            r"trace.jsonl:1: kmap 'k': array 'm.sizes' has 1 offsets, the volume of kernel_size \[3, 3, 3\] is 27",
        ),
        ({"m.in": np.array([0, 1.0, 2])}, r"maps.npz: array 'm.in' must hold integers, got dtype float64"),
        (
            {"m.in": np.array([True, False, True])},
            r"maps.npz: array 'm.in' must hold integers, got dtype bool",
        ),
        (
            {"m.in": np.array([[0, 1, 2]])},
            r"maps.npz: array 'm.in' must have 1 dimension\(s\), got shape \(1, 3\)",
        ),
        (
            {"m.in": np.array([0, -1, 2])},
            r"maps.npz: array 'm.in' holds values in \[-1, 2\], outside \[0, 2147483647\]",
        ),
        (
            {"m.in": np.array([0, 1])},
            r"maps.npz: map 'm' has 2 input rows, 3 output rows and sizes adding up to 3",
        ),
        (
            {"m.sizes": np.array([-1] + [0] * 12 + [4] + [0] * 13)},
            r"array 'm.sizes' holds values in \[-1, 4\]",
        ),
        ({"m.sizes": np.zeros(5000, np.int64)}, r"map 'm' has 5000 offsets, over 4096"),
        ({"m.in": None}, r"maps.npz: map 'm' lacks array 'm.in'"),
        ({"xyz": np.zeros((3, 3), np.int32)}, r"coordinates 'xyz' must be \(N, 4\), got shape \(3, 3\)"),
        ({"xyz": np.zeros((3, 4), np.int32)}, r"coordinates 'xyz' repeat a row"),
        (
            {"xyz": np.array([[0, 0, 0, 0], [0, 1, 0, 0]])},
            r"trace.jsonl:1: kmap 'k': coords_in 'xyz' has 2 rows, n_in is 3",
        ),
        (
            {"xyz": np.array([[0, 0, 0, 0], [-1, 1, 0, 0], [0, 2, 0, 0]])},
            r"coordinates 'xyz': b must lie in \[0, 32767\]",
        ),
        ({"xyz": None}, r"trace.jsonl:1: kmap 'k' refers to coordinates 'xyz', absent from maps.npz"),
    ],
)
def test_arrays_are_checked_against_the_ops(tmp_path, arrays, match):
    changed = {k: v for k, v in {**MAP, **arrays}.items() if v is not None}
    write_workload(tmp_path, [KMAP, {**CONV, "name": "c"}], changed)
    with pytest.raises(WorkloadError, match=match):
        load_workload(tmp_path)


def test_a_conv_volume_must_match_its_maps_and_its_kmap(tmp_path):
    write_workload(tmp_path, [KMAP, {**CONV, "kernel_volume": 8}], MAP)
    with pytest.raises(
        WorkloadError, match=r":2: sparse_conv 'c': array 'm.sizes' has 27 offsets, kernel_volume is 8"
    ):
        load_workload(tmp_path)
    maps = {**MAP, "m.sizes": np.array([0, 0, 0, 3, 0, 0, 0, 0])}
    write_workload(tmp_path, [{**KMAP, "kernel_size": 3}, {**CONV, "kernel_volume": 8}], maps)
    with pytest.raises(
        WorkloadError, match=r":1: kmap 'k': array 'm.sizes' has 8 offsets, the volume of kernel_size 3 is 27"
    ):
        load_workload(tmp_path)


def test_wide_and_unsigned_arrays_are_converted(tmp_path):
    maps = {
        **MAP,
        "m.in": MAP["m.in"].astype(np.uint64),
        "m.out": MAP["m.out"].astype(">i8"),
        "xyz": MAP["xyz"].astype(np.int16),
    }
    write_workload(tmp_path, [KMAP, CONV], maps)
    workload = load_workload(tmp_path)
    assert workload.arrays["m.in"].dtype == np.int32 and workload.arrays["m.out"].dtype == np.int32
    assert workload.arrays["xyz"].dtype == np.int32 and workload.arrays["m.sizes"].dtype == np.int64


def _npz_bytes(edit=lambda npy: npy, **arrays):
    """An .npz whose .npy members pass through `edit` (the zip's checksums stay right)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, array)
            archive.writestr(f"{name}.npy", edit(npy.getvalue()))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"garbage", r"maps.npz: not a readable .npz archive \(File is not a zip file\)"),
        (_npz_bytes(**MAP)[:200], r"maps.npz: not a readable .npz archive"),
        (_npz_bytes(a=np.array([{"x": 1}], dtype=object)), r"maps.npz: array 'a': holds Python objects"),
        (_npz_bytes(**MAP)[:-30], r"maps.npz: not a readable .npz archive"),
        (
            _npz_bytes(lambda b: b.replace(b"(3,)", b"(9,)"), **MAP),
            r"array 'm.in': truncated: 12 of 36 bytes",
        ),
        (
            _npz_bytes(lambda b: b.replace(b"(3,), }" + b" " * 12, b"(1000000000000,), }"), **MAP),
            r"array 'm.in': truncated: the header promises 4000000000000 bytes, the member has \d+",
        ),
        (_npz_bytes(lambda b: b.replace(b"(3,)", b"(-3,)"), **MAP), r"array 'm.in': negative shape \(-3,\)"),
        (
            _npz_bytes(lambda b: b.replace(b"'descr'", b"('descr"), **MAP),
            r"array 'm.in': corrupt .npy header \(\w+",
        ),
        (
            _npz_bytes(lambda b: b.replace(b"NUMPY", b"NUMPX"), **MAP),
            r"array 'm.in': the magic string is not correct",
        ),
        (
            _npz_bytes(lambda b: b"\x93NUMPY\x03\x00" + b[8:], **MAP),
            r"array 'm.in': unsupported .npy version \(3, 0\)",
        ),
        (_npz_bytes(lambda b: b[:-4], **MAP), r"array 'm.in': truncated: 8 of 12 bytes"),
    ],
)
def test_corrupt_npz_files_are_errors(tmp_path, blob, match):
    _write(tmp_path, [json.dumps(CONV)])
    (tmp_path / "maps.npz").write_bytes(blob)
    with pytest.raises(WorkloadError, match=match):
        load_workload(tmp_path)


def test_folders_and_empty_traces(tmp_path):
    (tmp_path / "trace.jsonl").mkdir()
    with pytest.raises(WorkloadError, match="no trace here"):
        load_workload(tmp_path)
    (tmp_path / "trace.jsonl").rmdir()
    _write(tmp_path, [json.dumps(CONV)])
    (tmp_path / "maps.npz").mkdir()
    with pytest.raises(WorkloadError, match=r"maps.npz: not a file"):
        load_workload(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(WorkloadError, match=r"empty.jsonl: no op records"):
        load_workload(tmp_path / "empty.jsonl")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(WorkloadError, match=r"cannot read topology .*folder.csv: not a file"):
        load_workload(tmp_path / "folder.csv")
    (tmp_path / "binary.csv").write_bytes(b"Layer, M, N, K\nfc, 1, \xff, 2\n")
    with pytest.raises(WorkloadError, match=r"binary.csv: not UTF-8 text"):
        load_workload(tmp_path / "binary.csv")
    (tmp_path / "huge.csv").write_text(f"Layer, M, N, K\nfc, {2**31}, 1, 1\n")
    with pytest.raises(WorkloadError, match=r"huge.csv:2: M, N and K must be in \[0, 2147483647\]"):
        load_workload(tmp_path / "huge.csv")
