"""PointAcc's units, each a pure function of (config, op record[, kernel maps]) -> UnitCost."""

from pointacc.units.base import UnitCost

__all__ = ["UnitCost"]
