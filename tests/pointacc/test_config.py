import pytest

from pointacc.config import Config, ConfigError, load_config
from pointacc.units import matrix

SCALE_SIM_CFG = """[general]
run_name = scale_sim_google

[architecture_presets]
ArrayHeight:    32
ArrayWidth:     64
IfmapSramSzkB:    64
FilterSramSzkB:   64
OfmapSramSzkB:    64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : {dataflow}
Bandwidth : 10
MemoryBanks: 1

[run_presets]
InterfaceBandwidth: CALC
"""
TOPOLOGY = "Layer, M, N, K,\nl0, 100, 200, 300,\nl1, 5000, 64, 32,\n"
GOLDEN = {"os": (6303, 19781), "ws": (9039, 5125), "is": (6519, 15009)}


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_unmodified_scale_sim_config_and_topology_give_its_cycles(tmp_path, dataflow):
    from pointacc.simulate import simulate
    from pointacc.workload import load_workload

    (tmp_path / "google.cfg").write_text(SCALE_SIM_CFG.format(dataflow=dataflow))
    (tmp_path / "gemm.csv").write_text(TOPOLOGY)
    config = load_config(tmp_path / "google.cfg")
    assert (config.array.array_height, config.array.array_width, config.array.dataflow) == (32, 64, dataflow)
    assert config.array.input_buffer_kb == 64 and config.run_name == "scale_sim_google"
    sim = simulate(config, load_workload(tmp_path / "gemm.csv"))
    assert tuple(layer.cycles("matrix") for layer in sim.layers) == GOLDEN[dataflow]
    assert (
        tuple(matrix.gemm_cycles(m, n, k, 32, 64, dataflow) for m, n, k in ((100, 200, 300), (5000, 64, 32)))
        == GOLDEN[dataflow]
    )


def test_presets_load_and_document_their_sources():
    server, edge = load_config("pointacc"), load_config("pointacc_edge")
    assert (server.array.array_height, edge.array.array_height) == (64, 16)
    assert server.dram.type == "HBM2" and edge.dram.type == "LPDDR4"
    from pointacc.config import PRESETS

    for name in ("pointacc.cfg", "pointacc_edge.cfg"):
        text = (PRESETS / name).read_text()
        assert "assumed" in text and "unverified" in text.lower()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[memory]\ncache_kb = lots\n", r"\[memory\] cache_kb: expected float, got 'lots'"),
        ("[memory]\npolicy = random\n", r"\[memory\] policy must be one of lru, fifo, direct"),
        ("[memory]\ncache_size = 3\n", r"unknown key 'cache_size' in \[memory\]"),
        ("[cache]\nways = 3\n", r"unknown section \[cache\]"),
        ("[architecture_presets]\narray_height = 0\n", r"\[architecture_presets\] array_height must be > 0"),
        ("[memory]\npolicy = direct\nways = 4\n", r"ways must be 1 with policy = direct"),
        ("no section header\n", "File contains no section headers"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, match):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_replace_and_missing_file(tmp_path):
    config = Config().replace(**{"memory.cache_kb": 64, "ways": 2, "dram.type": "DDR4"})
    assert (config.memory.cache_kb, config.memory.ways, config.dram.type) == (64.0, 2, "DDR4")
    with pytest.raises(ConfigError, match="ambiguous|unknown"):
        Config().replace(nonsense=1)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.cfg")
