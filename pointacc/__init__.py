"""PointAcc: a cycle-level simulator of the PointAcc point-cloud accelerator (Lin et al., MICRO 2021).

Reads workloads (op traces exported from the engine, built-in point-network generators, SCALE-Sim GEMM
topologies) and an INI configuration, and reports cycles, DRAM traffic and energy per unit and per layer.
Imports no torch; the hot loops live in the C++ core `pointacc._core`.
"""

__version__ = "0.1.0"
