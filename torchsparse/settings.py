"""Convolution settings: a frozen dataclass applied with a context manager (no module globals are mutated).

    with torchsparse.config(dataflow="gather_scatter"):
        y = model(x)

    plan = torchsparse.tune(model, x)      # per-layer-group choices, timed
    with torchsparse.config(plan=plan):
        y = model(x)

Settings apply to eager execution; code compiled with torch.compile uses the automatic choice.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from torchsparse import ops
from torchsparse.ops.convolution import GROUP_MAX_PAIRS, GROUP_TOLERANCE

__all__ = ["CONV3D", "DATAFLOWS", "IMPLICIT_GEMM", "Choice", "ConvConfig", "auto_candidates", "auto_choice", "choose", "config", "current_config", "default_tile"]

#: "fused": output-stationary tiles over the neighbour table (CPU, any floating dtype; bfloat16 / float16 computed in float32);
#: "gather_scatter": per offset, gather -> GEMM -> scatter over the pair list (any dtype; on CUDA the offsets are
#:     grouped into batched GEMMs, see `ops.conv3d_grouped`);
#: "implicit_gemm": output-stationary tensor-core tiles in Triton, rows in map order (CUDA; `ops.implicit_gemm`);
#: "implicit_gemm_sorted": the same with rows reordered by their offset bitmask, per split of the offsets.
DATAFLOWS = ("fused", "gather_scatter", "implicit_gemm", "implicit_gemm_sorted")
IMPLICIT_GEMM = ("implicit_gemm", "implicit_gemm_sorted")
#: First element of the profiling-region key of every convolution: (CONV3D, layer key, Choice)
#: (`torchsparse.profiling`; read by `torchsparse.tune`).
CONV3D = "torchsparse.conv3d"


@dataclass(frozen=True)
class Choice:
    """How one layer group runs: a dataflow and its parameters.

    Attributes:
        dataflow: one of DATAFLOWS.
        tile: "fused": rows per output tile (0: `default_tile`).
        split: implicit GEMM: offset ranges, each with its own partial output (and order when sorted), 1 to 4.
        group_tolerance, group_max_pairs: "gather_scatter" on CUDA: how offsets are grouped into batched GEMMs
            (`ops.conv3d_grouped`); the CPU kernel runs one GEMM per offset and ignores them.
    """

    dataflow: str
    tile: int = 0
    split: int = 1
    group_tolerance: float = GROUP_TOLERANCE
    group_max_pairs: int = GROUP_MAX_PAIRS

    def __post_init__(self) -> None:
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {DATAFLOWS}, got {self.dataflow!r}")
        if self.tile < 0:
            raise ValueError(f"tile must be >= 0 (0: automatic), got {self.tile}")
        if not 1 <= self.split <= 4:
            raise ValueError(f"split must be in [1, 4], got {self.split}")
        if not 0 <= self.group_tolerance <= 1:
            raise ValueError(f"group_tolerance must be in [0, 1], got {self.group_tolerance}")
        if self.group_max_pairs < 0:
            raise ValueError(f"group_max_pairs must be >= 0, got {self.group_max_pairs}")

    def supports(self, dtype: torch.dtype, device: torch.device | str) -> bool:
        """Whether this dataflow runs features of `dtype` on `device`: "fused" floating dtypes on the CPU; implicit
        GEMM float16 / bfloat16 / float32 / float64 on CUDA with Triton installed (CPU tensors under
        TRITON_INTERPRET=1); "gather_scatter" everything."""
        device_type = torch.device(device).type
        if self.dataflow == "fused":
            return device_type == "cpu" and dtype.is_floating_point
        if self.dataflow in IMPLICIT_GEMM:
            if not ops.HAS_TRITON or dtype not in ops.triton.DTYPES:
                return False
            return device_type == "cuda" or (device_type == "cpu" and ops.triton.interpreted())
        return True


@dataclass(frozen=True)
class ConvConfig:
    """Settings read by every sparse convolution.

    Attributes:
        dataflow: "auto" (`auto_choice`), or one of DATAFLOWS for all layers.
        tile: rows per output tile of the fused dataflow; 0 picks `default_tile` from the output rows and threads.
        split: offset ranges of the implicit GEMM dataflows (1 to 4).
        group_tolerance, group_max_pairs: offset grouping of "gather_scatter" on CUDA (`ops.conv3d_grouped`).
        plan: per-layer-group choices from `torchsparse.tune`, keyed by `layer_key`; they override the fields
            above for the groups they name.
        measure: with dataflow="auto", a layer that keeps a memo (`spnn.Conv3d` does) measures `auto_candidates`
            on its first inference call (no autograd) and keeps the fastest for later calls (`measure_auto`);
            False: `auto_choice` everywhere (reproducible dataflows).
        reduced_precision_reduction: float16 in the fused dataflow on a CPU with AVX512-FP16 multiplies in float16
            and sums products in float16 over runs of `ops.FP16_CHANNELS_PER_SUM` input channels before float32
            (1.3-1.9x faster in benchmarks/models/bench_minkunet.py --precision; error ~3x float16's rounding of the
            output); False: float32 sums throughout. The CPU twin of
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction, on by default as that is.
    """

    dataflow: str = "auto"
    tile: int = 0
    split: int = 1
    group_tolerance: float = GROUP_TOLERANCE
    group_max_pairs: int = GROUP_MAX_PAIRS
    measure: bool = True
    reduced_precision_reduction: bool = True
    plan: Mapping[str, Choice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dataflow != "auto" and self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be 'auto' or one of {DATAFLOWS}, got {self.dataflow!r}")
        self.choice("gather_scatter")  # validates the other fields

    def choice(self, dataflow: str) -> Choice:
        """The choice these settings make for `dataflow` (its parameters from the fields above)."""
        return Choice(dataflow, self.tile, self.split, self.group_tolerance, self.group_max_pairs)


def auto_candidates(dtype: torch.dtype, device: torch.device | str, kernel_volume: int) -> tuple[Choice, ...]:
    """The dataflows that a measured "auto" layer times, `auto_choice` first (CPU: fused, gather_scatter; CUDA:
    sorted and unsorted implicit GEMM, gather_scatter); those that do not run the dtype on the device are left out."""
    first = auto_choice(dtype, device, kernel_volume)
    if torch.device(device).type == "cuda":
        others = ("implicit_gemm_sorted", "implicit_gemm", "gather_scatter") if kernel_volume > 1 else ()
    else:
        others = ("fused", "gather_scatter")
    rest = [Choice(d) for d in others if d != first.dataflow and Choice(d).supports(dtype, device)]
    return (first, *rest)


def choose(runs: Mapping[Choice, Sequence[float]], default: Choice) -> Choice:
    """The choice with the smallest median time, unless its lead over `default` is within the noise.

    Noise: half the sum of the two choices' ranges (max - min of their runs). Machines are noisy; keeping the
    default when the difference is not measurable makes choices stable from run to run.
    """
    medians = {choice: statistics.median(times) for choice, times in runs.items() if times}
    best = min(medians, key=medians.__getitem__)
    if default not in medians or best == default:
        return best
    spread = (max(runs[best]) - min(runs[best]) + max(runs[default]) - min(runs[default])) / 2
    return best if medians[default] - medians[best] > spread else default


def auto_choice(dtype: torch.dtype, device: torch.device | str, kernel_volume: int) -> Choice:
    """The dataflow of ``dataflow="auto"`` for one layer.

    CPU: "fused" (`default_tile`). CUDA: "implicit_gemm_sorted" with split 1 where Triton runs the dtype and the
    kernel has more than one offset (sorting lets a tile skip the offsets its rows lack: on LiDAR scans a
    submanifold 3x3x3 row has ~8 of 27 neighbours), else "gather_scatter" (a 1x1x1 layer is one cuBLAS GEMM).
    `torchsparse.tune` measures the alternatives (unsorted, splits 2-4, grouping) per layer group.
    """
    fused = Choice("fused")
    if fused.supports(dtype, device):
        return fused
    sorted_gemm = Choice("implicit_gemm_sorted")
    if torch.device(device).type == "cuda" and kernel_volume > 1 and sorted_gemm.supports(dtype, device):
        return sorted_gemm
    return Choice("gather_scatter")


_CURRENT: contextvars.ContextVar[ConvConfig] = contextvars.ContextVar(
    "torchsparse_conv_config", default=ConvConfig()  # noqa: B039 (frozen; its empty plan is never mutated)
)


def current_config() -> ConvConfig:
    """The settings in effect in this thread / task."""
    return _CURRENT.get()


@contextlib.contextmanager
def config(**changes) -> Iterator[ConvConfig]:
    """Applies `changes` (fields of ConvConfig) on top of the current settings inside the block, then restores."""
    token = _CURRENT.set(dataclasses.replace(_CURRENT.get(), **changes))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def default_tile(num_rows: int, num_threads: int) -> int:
    """Rows per fused tile: 2048 (within a few percent of the best tile at 16-256 channels on the real scan, 2
    threads), halved until every thread gets at least 4 tiles, and at least 256."""
    tile = 2048
    while tile > 256 and num_rows < 4 * num_threads * tile:
        tile //= 2
    return tile
