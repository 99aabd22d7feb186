"""What every unit returns: cycles, action counts (for energy) and DRAM traffic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pointacc.limits import integer


@dataclass
class UnitCost:
    """Cost of one op on one unit.

    Attributes:
        cycles: busy cycles of the unit for the op (at the accelerator clock).
        actions: action name -> count, priced by the energy table (e.g. "mac", "sram_read",
            "sram_write", "dram_read_bits", "dram_write_bits", "compare", "distance").
        dram_read_bytes, dram_write_bytes: off-chip traffic caused by the op on this unit.
        detail: named intermediate quantities (formula terms) for reports and `pointacc explain`.
    """

    cycles: int = 0
    actions: Counter = field(default_factory=Counter)
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    detail: dict = field(default_factory=dict)

    def __add__(self, other: UnitCost) -> UnitCost:
        return UnitCost(
            self.cycles + other.cycles,
            self.actions + other.actions,
            self.dram_read_bytes + other.dram_read_bytes,
            self.dram_write_bytes + other.dram_write_bytes,
            {**self.detail, **other.detail},
        )

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes


def count_argument(name: str, value) -> int:
    """A non-negative integer argument (Python or NumPy integer), else TypeError / ValueError naming it."""
    return integer(name, value, 0)
