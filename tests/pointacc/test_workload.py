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
        (json.dumps({"op": "linear", "name": "x", "n": -3, "c_in": 4, "c_out": 2}), r":2: .*n must be >= 0"),
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
