"""Energy: per-action tables at 45 nm, technology scaling, and pricing of the units' action counts.

Actions and their word sizes (the units count them; this module prices them):

    mac              one multiply-accumulate at ``config.array.precision`` (multiply + add).
    sram_read/write  one element (``config.array.element_bytes``) read from / written to an on-chip buffer,
                     priced as element_bytes·8/64 of a 64-bit access to a buffer of that size.
    compare          one 32-bit comparison in the sorter/merger (priced as a 32-bit add).
    distance         one 3-D squared distance in a distance unit: 3 multiplies + 3 adds at the precision.
    dram_read_bits / dram_write_bits   one bit moved off chip (`pointacc.units.dram.pj_per_bit`).

Any other action name is accepted only when ``sram_kb`` gives its buffer size (then it is an SRAM access:
a write when the name ends in "_write", else a read). On-chip energies are scaled from 45 nm to
``config.energy.node_nm`` with `scale`; DRAM energy is a property of the DRAM device and is not scaled.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pointacc.units.dram import pj_per_bit

REFERENCE_NODE_NM = 45.0

SRAM_WORD_BITS = 64


@dataclass(frozen=True)
class EnergyTable:
    """Per-action energies in pJ at 45 nm.

    Attributes:
        name: table name, as in ``[energy] table``.
        mult_pj, add_pj: precision ("int8" | "fp16" | "fp32") -> pJ per multiply / add.
        mac_pj: precision -> pJ per MAC.
        sram_read_points, sram_write_points: ((buffer KB, pJ per 64-bit access), ...) in increasing size;
            see `sram_access_pj` for interpolation.
        compare_pj: pJ per 32-bit comparison.
        source: where the numbers come from.
    """

    name: str
    mult_pj: Mapping[str, float]
    add_pj: Mapping[str, float]
    mac_pj: Mapping[str, float]
    sram_read_points: tuple[tuple[float, float], ...]
    sram_write_points: tuple[tuple[float, float], ...]
    compare_pj: float
    source: str

    def distance_pj(self, precision: str) -> float:
        """pJ per 3-D squared distance: 3 multiplies + 3 adds at ``precision``."""
        return 3 * (self.mult_pj[precision] + self.add_pj[precision])


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm.
_MULT = MappingProxyType({"int8": 0.2, "fp16": 1.1, "fp32": 3.7})
_ADD = MappingProxyType({"int8": 0.03, "fp16": 0.4, "fp32": 0.9})
_HOROWITZ_SRAM = ((8.0, 10.0), (32.0, 20.0), (1024.0, 100.0))  # KB -> pJ per 64-bit read
_ADD32_PJ = 0.1


def _interpolate(points: tuple[tuple[float, float], ...], size_kb: float) -> float:
    """Linear in log2(size) between points; √size law outside them (matches 8→32 KB of Horowitz exactly)."""
    (first_kb, first_pj), (last_kb, last_pj) = points[0], points[-1]
    if size_kb <= first_kb:
        return first_pj * math.sqrt(size_kb / first_kb)
    if size_kb >= last_kb:
        return last_pj * math.sqrt(size_kb / last_kb)
    (lo_kb, lo_pj), (hi_kb, hi_pj) = next(
        pair for pair in itertools.pairwise(points) if size_kb <= pair[1][0]
    )
    t = (math.log2(size_kb) - math.log2(lo_kb)) / (math.log2(hi_kb) - math.log2(lo_kb))
    return lo_pj + t * (hi_pj - lo_pj)


# Accelergy (Wu et al., ICCAD 2019) 45 nm example: 128 KB SRAM 32.4 pJ read / 26.2 pJ write per 64-bit
# access, 8-bit MAC 0.315 pJ. Other buffer sizes follow Horowitz's size dependence anchored at that
# 128 KB point; fp16/fp32 arithmetic and comparisons are Horowitz's.
_ACCELERGY_READ_128KB = 32.4
_ACCELERGY_WRITE_128KB = 26.2
_HOROWITZ_128KB = _interpolate(_HOROWITZ_SRAM, 128.0)  # 52 pJ


def _scaled_points(factor: float) -> tuple[tuple[float, float], ...]:
    return tuple((kb, pj * factor) for kb, pj in _HOROWITZ_SRAM)


TABLES = MappingProxyType(
    {
        "horowitz45": EnergyTable(
            name="horowitz45",
            mult_pj=_MULT,
            add_pj=_ADD,
            mac_pj=MappingProxyType({p: _MULT[p] + _ADD[p] for p in _MULT}),
            sram_read_points=_HOROWITZ_SRAM,
            # Horowitz gives one number per access; no separate write figure, so write = read.
            sram_write_points=_HOROWITZ_SRAM,
            compare_pj=_ADD32_PJ,
            source="Horowitz, ISSCC 2014 (45 nm); SRAM write assumed equal to read",
        ),
        "accelergy45": EnergyTable(
            name="accelergy45",
            mult_pj=_MULT,
            add_pj=_ADD,
            mac_pj=MappingProxyType(
                {"int8": 0.315, "fp16": _MULT["fp16"] + _ADD["fp16"], "fp32": _MULT["fp32"] + _ADD["fp32"]}
            ),
            sram_read_points=_scaled_points(_ACCELERGY_READ_128KB / _HOROWITZ_128KB),
            sram_write_points=_scaled_points(_ACCELERGY_WRITE_128KB / _HOROWITZ_128KB),
            compare_pj=_ADD32_PJ,
            source=(
                "Accelergy 45 nm example (128 KB SRAM 32.4/26.2 pJ, int8 MAC 0.315 pJ); SRAM size "
                "dependence, fp16/fp32 MACs, compare and distance from Horowitz ISSCC 2014"
            ),
        ),
    }
)
"""Named 45 nm energy tables; ``[energy] table`` picks one."""


def get_table(name: str) -> EnergyTable:
    """The energy table called ``name``.

    Raises:
        ValueError: no such table.
    """
    if name not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {name!r}")
    return TABLES[name]


def sram_access_pj(table: EnergyTable, size_kb: float, write: bool = False) -> float:
    """pJ per 64-bit access to an SRAM of ``size_kb`` KB at 45 nm.

    Between the table's size points the energy is linear in log2(size) (Horowitz: 8 KB 10 pJ, 32 KB 20 pJ,
    1 MB 100 pJ, so 128 KB is 52 pJ); outside them it follows a √capacity law (assumed: bit-line and
    word-line length grow as √capacity; Horowitz's 8 KB → 32 KB pair follows it exactly).

    Raises:
        ValueError: ``size_kb`` is not positive.
    """
    if not size_kb > 0:
        raise ValueError(f"size_kb must be > 0, got {size_kb!r}")
    points = table.sram_write_points if write else table.sram_read_points
    return _interpolate(points, float(size_kb))


def scale(pj: float, node_nm: float) -> float:
    """Scales a 45 nm energy to ``node_nm``.

    Model (assumed, first order): dynamic energy C·V² with capacitance proportional to feature size and the
    supply voltage held roughly constant (≈0.9–1 V) since the end of Dennard scaling, so energy ∝ node/45.
    It is monotone in the node and exact at 45 nm; real nodes below ~16 nm scale less well than this.

    Raises:
        ValueError: ``pj`` negative or ``node_nm`` not positive.
    """
    if not pj >= 0:
        raise ValueError(f"pj must be >= 0, got {pj!r}")
    if not node_nm > 0:
        raise ValueError(f"node_nm must be > 0, got {node_nm!r}")
    return pj * (node_nm / REFERENCE_NODE_NM)


def _default_sram_kb(config, write: bool) -> float:
    # The Matrix Unit reads operands from the input and weight buffers and writes the output buffer.
    array = config.array
    return array.output_buffer_kb if write else (array.input_buffer_kb + array.weight_buffer_kb) / 2


def unit_energy_pj(config, action: str, sram_kb: Mapping[str, float] | None = None) -> float:
    """pJ of one ``action`` under ``config`` (table, precision, node, DRAM type); see the module docstring.

    Raises:
        ValueError: unknown action name, or a non-positive buffer size in ``sram_kb``.
    """
    table = get_table(config.energy.table)
    node = config.energy.node_nm
    precision = config.array.precision
    word_fraction = config.array.element_bytes * 8 / SRAM_WORD_BITS
    if sram_kb is not None and action in sram_kb:
        size = sram_kb[action]
        if not (isinstance(size, (int, float)) and size > 0):
            raise ValueError(f"sram_kb[{action!r}] must be a positive size in KB, got {size!r}")
        write = action.endswith("_write")
        return scale(sram_access_pj(table, size, write) * word_fraction, node)
    if action in ("sram_read", "sram_write"):
        write = action == "sram_write"
        return scale(sram_access_pj(table, _default_sram_kb(config, write), write) * word_fraction, node)
    if action == "mac":
        return scale(table.mac_pj[precision], node)
    if action == "compare":
        return scale(table.compare_pj, node)
    if action == "distance":
        return scale(table.distance_pj(precision), node)
    if action in ("dram_read_bits", "dram_write_bits"):
        return pj_per_bit(config.dram)
    known = "mac, sram_read, sram_write, compare, distance, dram_read_bits, dram_write_bits"
    raise ValueError(f"unknown action {action!r}; known: {known}, or a name given in sram_kb")


def price(config, actions: Counter, sram_kb: Mapping[str, float] | None = None) -> dict[str, float]:
    """Energy of action counts.

    Args:
        config: `pointacc.config.Config`; uses ``energy.table``, ``energy.node_nm``, ``array.precision``,
            the array buffer sizes and ``dram``.
        actions: action name -> count (non-negative).
        sram_kb: optional action name -> buffer size in KB, for SRAM actions on other buffers (e.g.
            {"cache_read": 256}) or to override the size used for "sram_read"/"sram_write" (default: the
            mean of the input and weight buffers for reads, the output buffer for writes).

    Returns:
        action name -> pJ, for every action in ``actions``.

    Raises:
        ValueError: an unknown action (the message names it) or a negative count.
    """
    out: dict[str, float] = {}
    for action, count in actions.items():
        if not count >= 0:
            raise ValueError(f"actions[{action!r}] must be >= 0, got {count!r}")
        out[action] = count * unit_energy_pj(config, action, sram_kb)
    return out


def energy_breakdown(
    config, per_unit: Mapping[str, Counter], sram_kb: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Energy per unit and in total.

    Args:
        config: `pointacc.config.Config`.
        per_unit: unit name (e.g. "matrix", "mapping", "memory", "dram") -> its action counts.
        sram_kb: as in `price`, applied to every unit.

    Returns:
        unit name -> pJ, plus "total": the sum of the units' pJ.

    Raises:
        ValueError: a unit called "total", or any error of `price` (naming the unit).
    """
    out: dict[str, float] = {}
    for unit, actions in per_unit.items():
        if unit == "total":
            raise ValueError("per_unit must not contain a unit called 'total'")
        try:
            out[unit] = sum(price(config, actions, sram_kb).values())
        except ValueError as error:
            raise ValueError(f"per_unit[{unit!r}]: {error}") from None
    out["total"] = sum(out.values())
    return out
