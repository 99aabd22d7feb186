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
        (
            "[architecture_presets]\narray_height = 0\n",
            r"\[architecture_presets\] array_height must be in \[1, 65536\], got 0",
        ),
        ("[memory]\npolicy = direct\nways = 4\n", r"ways must be 1 with policy = direct"),
        ("no section header\n", r"bad.cfg:1: expected a \[section\] header first, got 'no section header'"),
        ("[memory]\n= 3\n", r"bad.cfg:2: cannot parse '= 3"),
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


@pytest.mark.parametrize(
    "text, match",
    [
        ("[memory]\ncache_kb = nan\n", r"\[memory\] cache_kb must be a finite number, got nan"),
        ("[dram]\nbandwidth_gbps = inf\n", r"\[dram\] bandwidth_gbps must be a finite number, got inf"),
        ("[dram]\npj_per_bit = -inf\n", r"\[dram\] pj_per_bit must be a finite number"),
        ("[energy]\nnode_nm = 1e400\n", r"\[energy\] node_nm must be a finite number"),
        ("[memory]\nways = nan\n", r"\[memory\] ways: expected int, got 'nan'"),
        ("[memory]\nways = inf\n", r"\[memory\] ways: expected int, got 'inf'"),
        ("[memory]\nways = 2.5\n", r"\[memory\] ways: expected int, got '2.5'"),
        ("[memory]\nways = 65537\n", r"\[memory\] ways must be in \[1, 65536\], got 65537"),
        ("[memory]\ncache_kb = 1e7\n", r"\[memory\] cache_kb must be in \[0.001, 1048576\]"),
        (
            "[architecture_presets]\nclock_ghz = 0\n",
            r"\[architecture_presets\] clock_ghz must be in \[0.001, 100\]",
        ),
        ("[dram]\nlatency_cycles = -1\n", r"\[dram\] latency_cycles must be in \[0, 1000000000\]"),
        (
            "[memory]\nline_points = " + "9" * 5000 + "\n",
            r"\[memory\] line_points: expected int, got '9{37}\.\.\.'",
        ),
        ("[run_presets]\noverlap = maybe\n", r"\[run_presets\] overlap: expected bool"),
        ("[memory]\nways = 2\nways = 4\n", r"3: key 'ways' appears twice in \[memory\]"),
        ("[architecture_presets]\nBandwidth = 1e300\n", r"\[dram\] bandwidth_gbps must be in \[0.001, 1000000\]"),
    ],
)
def test_non_finite_and_out_of_range_values_name_the_key(tmp_path, text, match):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}:? ?{match}"):
        load_config(path)


def test_integers_written_as_floats_and_percent_signs_are_fine(tmp_path):
    path = tmp_path / "ok.cfg"
    path.write_text(
        "[general]\nrun_name = 100% edge\n[memory]\nways = 4.0\nline_points = 1e1\n[dram]\npj_per_bit = none\n"
    )
    config = load_config(path)
    assert (config.run_name, config.memory.ways, config.memory.line_points) == ("100% edge", 4, 10)
    assert config.dram.pj_per_bit is None


def test_unreadable_config_files_are_errors(tmp_path):
    (tmp_path / "binary.cfg").write_bytes(b"[memory]\nways = \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary.cfg: not UTF-8 text \(byte \d+\)"):
        load_config(tmp_path / "binary.cfg")
    (tmp_path / "folder.cfg").mkdir()
    with pytest.raises(ConfigError, match="cannot read config .*folder.cfg: not a file"):
        load_config(tmp_path / "folder.cfg")
    (tmp_path / "huge.cfg").write_text("[general]\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a config file is at most 1048576 bytes"):
        load_config(tmp_path / "huge.cfg")


def test_replace_checks_python_values_too():
    with pytest.raises(ConfigError, match=r"\[memory\] ways must be an integer, got 2.5"):
        Config().replace(**{"memory.ways": 2.5})
    with pytest.raises(ConfigError, match=r"\[architecture_presets\] clock_ghz must be a finite number"):
        Config().replace(**{"array.clock_ghz": float("nan")})
    with pytest.raises(ConfigError, match=r"\[memory\] ways must be in \[1, 65536\]"):
        Config().replace(**{"memory.ways": 10**400})
