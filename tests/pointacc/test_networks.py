"""Built-in point-network workloads: valid traces whose sizes match the published architectures."""

import collections

import pytest

from pointacc import networks
from pointacc.workload import FIELDS, load_workload, write_workload


def _macs(workload) -> int:
    return sum(op["n"] * op["c_in"] * op["c_out"] for op in workload.ops if op["op"] == "linear")


def _weights(workload) -> int:
    """Weights of the learned layers (the T-Nets' per-point transform products have none)."""
    return sum(
        op["c_in"] * op["c_out"]
        for op in workload.ops
        if op["op"] == "linear" and not op["name"].endswith(".apply")
    )


def _ops(workload, kind: str) -> list[dict]:
    return [op for op in workload.ops if op["op"] == kind]


@pytest.mark.parametrize("name", sorted(networks.BUILTIN))
def test_builtin_round_trips_through_a_trace_folder(name, tmp_path):
    workload = networks.builtin(name)
    assert workload.name == name and workload.ops and workload.meta["network"] == name
    names = [op["name"] for op in workload.ops]
    assert len(set(names)) == len(names)
    assert all(op["op"] in FIELDS and isinstance(op["layer"], str) and op["layer"] for op in workload.ops)
    loaded = load_workload(write_workload(tmp_path / name, workload.ops, workload.arrays, workload.meta))
    assert loaded.ops == workload.ops
    assert loaded.meta == workload.meta
    assert loaded.name == name


@pytest.mark.parametrize("name", sorted(networks.BUILTIN))
def test_batch_scales_dense_work_and_repeats_mapping_per_cloud(name):
    one, four = networks.builtin(name), networks.builtin(name, batch=4)
    assert _macs(four) == 4 * _macs(one)
    mapping = ("fps", "knn", "ball_query")

    def count(workload):
        return collections.Counter(op["op"] for op in workload.ops if op["op"] in mapping)

    assert count(four) == {kind: 4 * n for kind, n in count(one).items()}
    for op in four.ops:
        if op["op"] in mapping:  # every cloud searches only its own points
            twin = next(o for o in one.ops if o["name"] == op["name"].rsplit(".b", 1)[0])
            assert {k: v for k, v in op.items() if k != "name"} == {
                k: v for k, v in twin.items() if k != "name"
            }


def test_pointnet_matches_table_6():
    workload = networks.pointnet()
    # Qi et al. 2017, Table 6: 3.5 M parameters and 440 M FLOPs; 148 M FLOPs without the transforms.
    assert 4.2e8 <= _macs(workload) <= 4.6e8
    assert 3.3e6 <= _weights(workload) <= 3.5e6
    vanilla = networks.pointnet(transforms=False)
    assert 1.4e8 <= _macs(vanilla) <= 1.6e8
    assert len(_ops(workload, "reduce")) == 3 and len(_ops(vanilla, "reduce")) == 1
    pool = next(op for op in workload.ops if op["name"] == "maxpool")
    assert (pool["n_in"], pool["n_out"], pool["c"]) == (1024, 1, 1024)
    assert {op["c_out"] for op in workload.ops if op["name"].endswith("fc.2")} == {9, 4096, 40}
    assert workload.ops[-1]["op"] == "linear" and workload.ops[-1]["c_out"] == 40
    assert networks.pointnet(num_classes=10).ops[-1]["c_out"] == 10
    first = next(op for op in vanilla.ops if op["op"] == "linear")
    assert (first["n"], first["c_in"], first["c_out"]) == (1024, 3, 64)


def test_pointnet2_ssg_levels():
    workload = networks.pointnet2_ssg()
    fps = _ops(workload, "fps")
    assert [(op["n_points"], op["n_samples"]) for op in fps] == [
        (1024, 512),
        (512, 128),
    ]  # group-all needs none
    queries = _ops(workload, "ball_query")
    assert [(op["n_query"], op["n_points"], op["radius"], op["k"]) for op in queries] == [
        (512, 1024, 0.2, 32),
        (128, 512, 0.4, 64),
    ]
    gathers = _ops(workload, "gather")
    assert [(op["n"], op["c"]) for op in gathers] == [(512 * 32, 3), (128 * 64, 128 + 3)]
    pools = _ops(workload, "reduce")
    assert [(op["n_in"], op["n_out"], op["c"]) for op in pools] == [
        (512 * 32, 512, 128),
        (128 * 64, 128, 256),
        (128, 1, 1024),
    ]
    widths = [op["c_out"] for op in _ops(workload, "linear")]
    assert widths == [64, 64, 128, 128, 128, 256, 256, 512, 1024, 512, 256, 40]
    assert next(op for op in workload.ops if op["name"] == "sa3.mlp.0")["c_in"] == 256 + 3
    # Published: 1.48 M parameters (biases and BatchNorm included).
    assert 1.40e6 <= _weights(workload) <= 1.48e6
    assert 0.8e9 <= _macs(workload) <= 0.9e9
    kinds = [op["op"] for op in workload.ops]
    assert kinds[:4] == ["fps", "ball_query", "gather", "linear"]


def test_dgcnn_edge_convs():
    workload = networks.dgcnn()
    knn = _ops(workload, "knn")
    assert [(op["n_query"], op["n_points"], op["k"], op["c"]) for op in knn] == [
        (1024, 1024, 20, 3),
        (1024, 1024, 20, 64),
        (1024, 1024, 20, 64),
        (1024, 1024, 20, 128),
    ]
    edges = [op for op in _ops(workload, "linear") if op["name"].endswith(".edge")]
    assert [(op["n"], op["c_in"], op["c_out"]) for op in edges] == [
        (20480, 6, 64),
        (20480, 128, 64),
        (20480, 128, 128),
        (20480, 256, 256),
    ]
    assert [op["n"] for op in _ops(workload, "gather")] == [20480] * 4
    pools = _ops(workload, "reduce")
    assert [(op["n_in"], op["n_out"], op["reduction"]) for op in pools] == [(20480, 1024, "max")] * 4 + [
        (1024, 1, "max"),
        (1024, 1, "mean"),
    ]
    conv5 = next(op for op in workload.ops if op["name"] == "conv5")
    assert (conv5["c_in"], conv5["c_out"]) == (512, 1024)
    head = [(op["c_in"], op["c_out"]) for op in _ops(workload, "linear")[-3:]]
    assert head == [(2048, 512), (512, 256), (256, 40)]
    # Usually quoted: 1.8 M parameters, 2.4 GFLOPs.
    assert 1.75e6 <= _weights(workload) <= 1.85e6
    assert 2.3e9 <= _macs(workload) <= 2.5e9
    tensorflow = networks.dgcnn(channels=(64, 64, 64, 128))
    assert next(op for op in tensorflow.ops if op["name"] == "conv5")["c_in"] == 320
    assert networks.dgcnn(k=10).ops[0]["k"] == 10


def test_unknown_name_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="pointnet3"):
        networks.builtin("pointnet3")
    with pytest.raises(ValueError, match="num_points"):
        networks.pointnet2_ssg(num_points=256)
    with pytest.raises(ValueError, match="batch"):
        networks.pointnet(batch=0)
    with pytest.raises(ValueError, match="num_classes"):
        networks.builtin("pointnet", num_classes=1.5)
    with pytest.raises(ValueError, match="k must be"):
        networks.dgcnn(num_points=10, k=20)
    with pytest.raises(ValueError, match="channels"):
        networks.dgcnn(channels=())
    with pytest.raises(TypeError):
        networks.BUILTIN["mine"] = networks.pointnet
