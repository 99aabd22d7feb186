import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointacc.cli import main as cli
from pointacc.config import Config, load_config
from pointacc.networks import builtin
from pointacc.simulate import UNITS, simulate
from pointacc.workload import load_workload


@pytest.fixture(scope="module")
def minkunet_trace(tmp_path_factory):
    """The real maps of MinkUNet cr 0.5 on the bundled SemanticKITTI scan, exported from the engine."""
    from torchsparse.tools import export_workload

    folder = tmp_path_factory.mktemp("trace")
    export_workload.main(["--model", "SemanticKITTI_val_MinkUNet@29GMACs", "-o", str(folder)])
    return load_workload(folder)


def _summary(config, workload, **changes):
    return simulate(config.replace(**changes) if changes else config, workload).summary()


def _dram(summary):
    return summary["dram_read_bytes"] + summary["dram_write_bytes"]


def test_output_major_gather_moves_fewer_bytes_than_offset_major(minkunet_trace):
    config = load_config("pointacc")
    output = _summary(config, minkunet_trace, **{"memory.gather_order": "output"})
    offset = _summary(config, minkunet_trace, **{"memory.gather_order": "offset"})
    assert _dram(output) < _dram(offset)
    assert output["total_cycles"] <= offset["total_cycles"]


def test_caching_and_fusion_ablations_move_the_paper_way(minkunet_trace):
    config = load_config("pointacc")
    full = _summary(config, minkunet_trace)
    no_cache = _summary(config, minkunet_trace, **{"memory.caching": False})
    assert _dram(no_cache) > _dram(full)
    assert no_cache["energy_pj"]["total"] > full["energy_pj"]["total"]
    assert no_cache["total_cycles"] >= full["total_cycles"]
    fixed = _summary(config, minkunet_trace, **{"memory.reconfigure": False})
    assert _dram(fixed) >= _dram(full)
    pointnet = builtin("pointnet")
    fused = _summary(config, pointnet)
    unfused = _summary(config, pointnet, **{"memory.fusion": False})
    assert _dram(unfused) > _dram(fused) and unfused["energy_pj"]["total"] > fused["energy_pj"]["total"]
    serial = _summary(config, minkunet_trace, **{"run.overlap": False})
    assert serial["total_cycles"] > full["total_cycles"]


def test_report_names_the_shares(minkunet_trace, tmp_path, capsys):
    folder = tmp_path / "out"
    code = cli(["run", "-c", "pointacc", "-t", str(_trace_path(minkunet_trace, tmp_path)), "-p", str(folder)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mapping" in out and "data movement" in out and "MACs" in out
    folder = folder / "pointacc"  # -p / run_name /, as SCALE-Sim
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["work_share"]) == {"mapping", "data movement", "MACs"}
    assert sum(summary["work_share"].values()) == pytest.approx(1.0)
    assert summary["energy_pj"]["total"] == pytest.approx(sum(summary["energy_pj"][u] for u in UNITS))
    assert summary["config"]["memory"]["gather_order"] == "output"
    for name in (
        "COMPUTE_REPORT.csv",
        "BANDWIDTH_REPORT.csv",
        "DETAILED_ACCESS_REPORT.csv",
        "POINTACC_COMPUTE_REPORT.csv",
        "POINTACC_BANDWIDTH_REPORT.csv",
        "POINTACC_ACCESS_REPORT.csv",
        "ENERGY_REPORT.csv",
        "layers.png",
    ):
        assert (folder / name).stat().st_size > 0
    rows = (folder / "POINTACC_COMPUTE_REPORT.csv").read_text().splitlines()
    assert len(rows) == len(minkunet_trace.ops) + 1
    gemm_ops = [op for op in minkunet_trace.ops if op["op"] in ("gemm", "linear", "sparse_conv")]
    assert len((folder / "COMPUTE_REPORT.csv").read_text().splitlines()) == len(gemm_ops) + 1


def _trace_path(workload, tmp_path):
    from pointacc.workload import write_workload

    return write_workload(tmp_path / "trace", workload.ops, workload.arrays, workload.meta)


@settings(max_examples=15, deadline=None)
@given(st.floats(1.0, 512.0), st.floats(1.0, 4.0))
def test_more_bandwidth_never_costs_cycles(bandwidth, factor):
    workload = builtin("pointnet2_ssg")
    config = Config().replace(**{"dram.bandwidth_gbps": bandwidth})
    faster = config.replace(**{"dram.bandwidth_gbps": bandwidth * factor})
    assert simulate(faster, workload).total_cycles <= simulate(config, workload).total_cycles


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["pointnet", "pointnet2_ssg", "dgcnn"]),
    st.integers(512, 2048),
    st.sampled_from([16, 64, 256]),
)
def test_fusion_never_adds_dram_bytes_and_energy_sums(name, points, buffer_kb):
    workload = builtin(name, num_points=points)
    config = Config().replace(**{"array.output_buffer_kb": buffer_kb})
    fused = simulate(config, workload).summary()
    unfused = simulate(config.replace(**{"memory.fusion": False}), workload).summary()
    assert _dram(fused) <= _dram(unfused)
    for summary in (fused, unfused):
        assert summary["energy_pj"]["total"] == pytest.approx(sum(summary["energy_pj"][u] for u in UNITS))


def test_trace_and_analytic_fidelity_agree_on_compute(minkunet_trace):
    config = load_config("pointacc")
    trace = simulate(config, minkunet_trace, "trace")
    analytic = simulate(config, minkunet_trace, "analytic")
    assert trace.busy("matrix") == analytic.busy("matrix")  # the same pairs feed the Matrix Unit
    assert trace.busy("mapping") <= analytic.busy("mapping")  # real merges stop at the shorter list's end
