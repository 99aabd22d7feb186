"""Energy tables, technology scaling, pricing of action counts and per-unit breakdowns."""

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointacc.config import Config
from pointacc.energy import (
    TABLES,
    energy_breakdown,
    get_table,
    price,
    scale,
    sram_access_pj,
    unit_energy_pj,
)

HOROWITZ = TABLES["horowitz45"]
ACCELERGY = TABLES["accelergy45"]


def _config(**changes):
    return Config().replace(**changes)


@pytest.mark.parametrize(("precision", "mac"), [("int8", 0.23), ("fp16", 1.5), ("fp32", 4.6)])
def test_horowitz_mac_is_multiply_plus_add(precision, mac):
    assert HOROWITZ.mac_pj[precision] == pytest.approx(mac)
    assert unit_energy_pj(_config(**{"array.precision": precision}), "mac") == pytest.approx(mac)


@pytest.mark.parametrize(("size_kb", "pj"), [(8, 10.0), (32, 20.0), (1024, 100.0), (128, 52.0), (16, 15.0)])
def test_horowitz_sram_points_and_log2_interpolation(size_kb, pj):
    assert sram_access_pj(HOROWITZ, size_kb) == pytest.approx(pj)
    assert sram_access_pj(HOROWITZ, size_kb, write=True) == pytest.approx(pj)


def test_sram_outside_the_points_follows_sqrt_capacity():
    assert sram_access_pj(HOROWITZ, 2) == pytest.approx(5.0)
    assert sram_access_pj(HOROWITZ, 4096) == pytest.approx(200.0)


def test_accelergy_table():
    assert sram_access_pj(ACCELERGY, 128) == pytest.approx(32.4)
    assert sram_access_pj(ACCELERGY, 128, write=True) == pytest.approx(26.2)
    assert ACCELERGY.mac_pj["int8"] == pytest.approx(0.315)
    # Filled from Horowitz:
    assert ACCELERGY.mac_pj["fp16"] == pytest.approx(HOROWITZ.mac_pj["fp16"])
    assert ACCELERGY.compare_pj == HOROWITZ.compare_pj == pytest.approx(0.1)
    ratio = sram_access_pj(ACCELERGY, 512) / sram_access_pj(HOROWITZ, 512)
    assert ratio == pytest.approx(32.4 / 52.0)


def test_compare_and_distance():
    assert unit_energy_pj(Config(), "compare") == pytest.approx(0.1)
    assert unit_energy_pj(_config(**{"array.precision": "fp16"}), "distance") == pytest.approx(
        3 * (1.1 + 0.4)
    )
    assert unit_energy_pj(_config(**{"array.precision": "int8"}), "distance") == pytest.approx(
        3 * (0.2 + 0.03)
    )


@settings(deadline=None)
@given(
    a=st.floats(0.01, 1e5), b=st.floats(0.01, 1e5), write=st.booleans(), name=st.sampled_from(sorted(TABLES))
)
def test_sram_energy_grows_with_size(a, b, write, name):
    small, large = sorted((a, b))
    table = TABLES[name]
    assert 0 < sram_access_pj(table, small, write) <= sram_access_pj(table, large, write)


def test_tables_are_read_only():
    with pytest.raises(TypeError):
        TABLES["mine"] = HOROWITZ
    with pytest.raises(TypeError):
        HOROWITZ.mac_pj["int8"] = 0.0


def test_unknown_table_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="table"):
        get_table("cacti7")
    with pytest.raises(ValueError, match="size_kb"):
        sram_access_pj(HOROWITZ, 0)


def test_scale_is_identity_at_45nm_and_linear():
    assert scale(3.7, 45) == 3.7
    assert scale(10.0, 22.5) == pytest.approx(5.0)


@settings(deadline=None)
@given(pj=st.floats(0.001, 1e6), a=st.floats(1.0, 180.0), b=st.floats(1.0, 180.0))
def test_scale_is_monotone_in_the_node(pj, a, b):
    small, large = sorted((a, b))
    assert scale(pj, small) <= scale(pj, large)


@pytest.mark.parametrize(
    ("args", "name"), [((-1.0, 45), "pj"), ((1.0, 0), "node_nm"), ((1.0, -7), "node_nm")]
)
def test_scale_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        scale(*args)


def test_price_converts_elements_to_64_bit_accesses():
    # Default buffers are 256 KB: 20 + 80 * 3/5 = 68 pJ per 64-bit access.
    fp16 = price(_config(**{"array.precision": "fp16"}), Counter(sram_read=4, sram_write=1))
    assert fp16 == pytest.approx({"sram_read": 4 * 68.0 / 4, "sram_write": 68.0 / 4})
    int8 = price(_config(**{"array.precision": "int8"}), Counter(sram_read=8))
    assert int8["sram_read"] == pytest.approx(68.0)


def test_price_uses_buffer_sizes():
    config = _config(
        **{"array.input_buffer_kb": 8, "array.weight_buffer_kb": 8, "array.output_buffer_kb": 1024}
    )
    priced = price(config, Counter(sram_read=1, sram_write=1))
    assert priced["sram_read"] == pytest.approx(10.0 / 4)
    assert priced["sram_write"] == pytest.approx(100.0 / 4)
    override = price(
        config,
        Counter(sram_read=1, cache_read=2, cache_write=1),
        {"sram_read": 32, "cache_read": 8, "cache_write": 8},
    )
    assert override == pytest.approx(
        {"sram_read": 20.0 / 4, "cache_read": 2 * 10.0 / 4, "cache_write": 10.0 / 4}
    )


def test_dram_bits_use_the_type_and_are_not_node_scaled():
    config = _config(**{"dram.type": "LPDDR4", "energy.node_nm": 7})
    priced = price(config, Counter(dram_read_bits=1000, dram_write_bits=10, mac=100))
    assert priced["dram_read_bits"] == pytest.approx(8000.0)
    assert priced["dram_write_bits"] == pytest.approx(80.0)
    assert priced["mac"] == pytest.approx(100 * 1.5 * 7 / 45)
    assert price(_config(**{"dram.pj_per_bit": 2.0}), Counter(dram_read_bits=3))["dram_read_bits"] == 6.0


def test_unknown_action_names_the_action():
    with pytest.raises(ValueError, match="'teleport'"):
        price(Config(), Counter(mac=1, teleport=3))
    with pytest.raises(ValueError, match="'cache_read'"):
        price(Config(), Counter(cache_read=1))


def test_bad_counts_and_sizes_raise():
    with pytest.raises(ValueError, match="mac"):
        price(Config(), Counter(mac=-1))
    with pytest.raises(ValueError, match="cache_read"):
        price(Config(), Counter(cache_read=1), {"cache_read": 0})


ACTIONS = st.dictionaries(
    st.sampled_from(
        ["mac", "sram_read", "sram_write", "compare", "distance", "dram_read_bits", "dram_write_bits"]
    ),
    st.integers(0, 10**9),
)


@settings(deadline=None)
@given(
    per_unit=st.dictionaries(st.sampled_from(["matrix", "mapping", "memory", "dram"]), ACTIONS, max_size=4),
    table=st.sampled_from(sorted(TABLES)),
    precision=st.sampled_from(["int8", "fp16", "fp32"]),
    node=st.floats(5.0, 90.0),
)
def test_breakdown_components_sum_to_total(per_unit, table, precision, node):
    config = _config(**{"energy.table": table, "array.precision": precision, "energy.node_nm": node})
    counters = {unit: Counter(actions) for unit, actions in per_unit.items()}
    breakdown = energy_breakdown(config, counters)
    assert set(breakdown) == set(counters) | {"total"}
    for unit, actions in counters.items():
        assert breakdown[unit] == pytest.approx(sum(price(config, actions).values()))
        assert breakdown[unit] >= 0
    assert breakdown["total"] == pytest.approx(math.fsum(v for k, v in breakdown.items() if k != "total"))


def test_breakdown_rejects_a_unit_called_total_and_names_the_unit_on_errors():
    with pytest.raises(ValueError, match="total"):
        energy_breakdown(Config(), {"total": Counter(mac=1)})
    with pytest.raises(ValueError, match=r"per_unit\['mapping'\].*'sort'"):
        energy_breakdown(Config(), {"matrix": Counter(mac=1), "mapping": Counter(sort=1)})
