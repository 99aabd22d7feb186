"""DRAM unit: burst rounding, latency, bandwidth-limited streaming, per-bit energy defaults."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointacc.config import Config
from pointacc.units.dram import PJ_PER_BIT, bytes_per_cycle, pj_per_bit, transfer


def _config(**changes):
    return Config().replace(
        **{f"dram.{key}" if "." not in key else key: value for key, value in changes.items()}
    )


def test_default_energy_per_bit_by_type():
    assert PJ_PER_BIT["HBM2"] == 3.9
    assert PJ_PER_BIT["LPDDR4"] == 8.0
    for dram_type in ("HBM2", "LPDDR4", "DDR4", "GDDR6"):
        assert pj_per_bit(_config(type=dram_type).dram) == PJ_PER_BIT[dram_type]
    # Stacked HBM2 is the cheapest per bit of the four.
    assert min(PJ_PER_BIT, key=PJ_PER_BIT.get) == "HBM2"


def test_configured_energy_per_bit_overrides_the_type():
    assert pj_per_bit(_config(type="DDR4", pj_per_bit=5.5).dram) == 5.5


def test_table_cannot_be_modified():
    with pytest.raises(TypeError):
        PJ_PER_BIT["HBM2"] = 1.0


def test_no_bytes_no_cycles():
    cost = transfer(Config(), 0, 0)
    assert cost.cycles == 0
    assert cost.dram_bytes == 0
    assert cost.actions["dram_read_bits"] == cost.actions["dram_write_bits"] == 0


def test_bytes_round_up_to_bursts_and_pay_latency_once():
    config = _config(bandwidth_gbps=256.0, latency_cycles=100, burst_bytes=64)  # 256 B per cycle at 1 GHz
    cost = transfer(config, 1, 0)
    assert cost.dram_read_bytes == 64
    assert cost.actions["dram_read_bits"] == 512
    assert cost.cycles == 100 + 1
    cost = transfer(config, 1000, 65)  # 16 bursts in, 2 out: 1152 bytes in 5 cycles
    assert (cost.dram_read_bytes, cost.dram_write_bytes) == (1024, 128)
    assert cost.actions["dram_write_bits"] == 1024
    assert cost.cycles == 100 + 5
    assert cost.detail["read_bursts"] == 16
    assert cost.detail["write_bursts"] == 2


def test_exact_multiples_do_not_round_up():
    # 19.2 GB/s at 0.8 GHz is exactly 24 B per cycle; 192 B is 8 cycles (binary floats would give 9).
    config = _config(**{"bandwidth_gbps": 19.2, "latency_cycles": 0, "array.clock_ghz": 0.8})
    assert bytes_per_cycle(config) == pytest.approx(24.0)
    assert transfer(config, 192, 0).cycles == 8


def test_numpy_byte_counts_are_accepted():
    assert transfer(Config(), np.int64(64), np.uint32(0)).dram_read_bytes == 64


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((-1, 0), ValueError, "read_bytes"),
        ((0, -64), ValueError, "write_bytes"),
        ((1.5, 0), TypeError, "read_bytes"),
    ],
)
def test_bad_byte_counts_raise_naming_them(args, error, name):
    with pytest.raises(error, match=rf"^{name} "):
        transfer(Config(), *args)


BYTES = st.integers(0, 10**7)
BANDWIDTH = st.floats(0.5, 4096.0, allow_nan=False, allow_infinity=False)


@settings(deadline=None)
@given(
    read=BYTES,
    write=BYTES,
    low=BANDWIDTH,
    high=BANDWIDTH,
    latency=st.integers(0, 500),
    burst=st.sampled_from([32, 64, 128]),
)
def test_more_bandwidth_never_more_cycles(read, write, low, high, latency, burst):
    low, high = sorted((low, high))
    slow = transfer(_config(bandwidth_gbps=low, latency_cycles=latency, burst_bytes=burst), read, write)
    fast = transfer(_config(bandwidth_gbps=high, latency_cycles=latency, burst_bytes=burst), read, write)
    assert fast.cycles <= slow.cycles
    assert fast.dram_bytes == slow.dram_bytes


@settings(deadline=None)
@given(read=BYTES, write=BYTES, bandwidth=BANDWIDTH, burst=st.sampled_from([16, 64, 256]))
def test_rounding_and_cycle_bounds(read, write, bandwidth, burst):
    config = _config(bandwidth_gbps=bandwidth, latency_cycles=100, burst_bytes=burst)
    cost = transfer(config, read, write)
    for requested, moved in ((read, cost.dram_read_bytes), (write, cost.dram_write_bytes)):
        assert moved % burst == 0
        assert requested <= moved < requested + burst
    assert cost.actions["dram_read_bits"] == 8 * cost.dram_read_bytes
    assert cost.actions["dram_write_bits"] == 8 * cost.dram_write_bytes
    if cost.dram_bytes:
        streaming = cost.cycles - 100
        assert streaming * bandwidth >= cost.dram_bytes * (1 - 1e-12)
        assert (streaming - 1) * bandwidth < cost.dram_bytes
    else:
        assert cost.cycles == 0
