"""Off-chip DRAM: burst-granular transfers, a fixed access latency and a peak bandwidth.

A transfer moves ``read_bytes`` in and ``write_bytes`` out over one shared interface. Each direction is
rounded up to whole bursts (``config.dram.burst_bytes``); the interface moves
``bandwidth_gbps / clock_ghz`` bytes per accelerator cycle (GB/s divided by Gcycles/s), and the first
beat arrives ``latency_cycles`` after the request, paid once per transfer. Energy is priced per bit by
`pointacc.energy` with `pj_per_bit`.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from types import MappingProxyType

from pointacc.units.base import UnitCost, count_argument

PJ_PER_BIT = MappingProxyType({"HBM2": 3.9, "LPDDR4": 8.0, "DDR4": 20.0, "GDDR6": 14.0})
"""Default DRAM access energy in pJ per bit by type (whole access: array, periphery and interface).

- HBM2 3.9 and LPDDR4 8: published figures (docs/conventions.md §4; HBM2 from O'Connor et al., "Fine-Grained DRAM",
  MICRO 2017; the same two values are Accelergy's CACTI-plug-in DRAM table).
- GDDR6 14: **assumed**. No published per-bit figure for GDDR6 was found; this is the GDDR5 value of
  O'Connor et al. (MICRO 2017, docs/conventions.md §4), GDDR6's predecessor with the same point-to-point
  PCB interface (GDDR6 lowers the voltage to 1.35 V but doubles the per-pin rate).
- DDR4 20: **assumed**. No published per-bit figure for DDR4 was found; a DIMM interface with termination
  puts it above GDDR5 (14) and well below the DDR3 figure (70 pJ/bit, Chatterjee et al., MICRO 2017, as
  used in Accelergy's DRAM table). Set ``[dram] pj_per_bit`` to override any of these.
"""


def pj_per_bit(dram) -> float:
    """Access energy per bit of a `pointacc.config.DramConfig`: its ``pj_per_bit`` or its type's default.

    Raises:
        ValueError: ``dram.type`` has no default and ``dram.pj_per_bit`` is None.
    """
    if dram.pj_per_bit is not None:
        return float(dram.pj_per_bit)
    if dram.type not in PJ_PER_BIT:
        raise ValueError(f"dram.type must be one of {', '.join(PJ_PER_BIT)}, got {dram.type!r}")
    return PJ_PER_BIT[dram.type]


def _exact(value: float) -> Fraction:
    # Decimal-exact: 19.2 GB/s is 96/5, not the nearest binary float, so exact multiples do not round up.
    return Fraction(repr(float(value)))


def bytes_per_cycle(config) -> float:
    """Peak DRAM bytes per accelerator cycle: ``dram.bandwidth_gbps / array.clock_ghz``."""
    return config.dram.bandwidth_gbps / config.array.clock_ghz


def transfer(config, read_bytes: int, write_bytes: int) -> UnitCost:
    """Cost of moving ``read_bytes`` from and ``write_bytes`` to DRAM in one transfer.

    cycles = latency_cycles (0 when nothing moves) + ⌈(burst-rounded read + write bytes) / bytes per cycle⌉.

    Args:
        config: `pointacc.config.Config`; uses ``dram.bandwidth_gbps``, ``dram.latency_cycles``,
            ``dram.burst_bytes`` and ``array.clock_ghz``.
        read_bytes: bytes read from DRAM (non-negative integer).
        write_bytes: bytes written to DRAM (non-negative integer).

    Returns:
        UnitCost with dram_read_bytes / dram_write_bytes and actions "dram_read_bits" / "dram_write_bits"
        all burst-rounded, and detail: read_bursts, write_bursts, bytes_per_cycle, latency_cycles,
        transfer_cycles.

    Raises:
        ValueError: a negative byte count.
        TypeError: a byte count that is not an integer.
    """
    read_bytes = count_argument("read_bytes", read_bytes)
    write_bytes = count_argument("write_bytes", write_bytes)
    burst = config.dram.burst_bytes
    read_bursts = -(-read_bytes // burst)
    write_bursts = -(-write_bytes // burst)
    read_rounded, write_rounded = read_bursts * burst, write_bursts * burst
    total = read_rounded + write_rounded
    per_cycle = _exact(config.dram.bandwidth_gbps) / _exact(config.array.clock_ghz)
    streaming = math.ceil(total / per_cycle)
    latency = config.dram.latency_cycles if total else 0
    return UnitCost(
        cycles=latency + streaming,
        actions=Counter({"dram_read_bits": 8 * read_rounded, "dram_write_bits": 8 * write_rounded}),
        dram_read_bytes=read_rounded,
        dram_write_bytes=write_rounded,
        detail={
            "read_bursts": read_bursts,
            "write_bursts": write_bursts,
            "bytes_per_cycle": float(per_cycle),
            "latency_cycles": latency,
            "transfer_cycles": streaming,
        },
    )
