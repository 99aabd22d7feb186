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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["DATAFLOWS", "Choice", "ConvConfig", "config", "current_config", "default_tile"]

#: "fused": output-stationary tiles over the neighbour table (CPU, any floating dtype; bfloat16 / float16 computed in float32);
#: "gather_scatter": per offset, gather -> GEMM -> scatter over the pair list (any dtype).
DATAFLOWS = ("fused", "gather_scatter")


@dataclass(frozen=True)
class Choice:
    """How one layer group runs: a dataflow and, for "fused", the rows per output tile (0: `default_tile`)."""

    dataflow: str
    tile: int = 0

    def __post_init__(self) -> None:
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {DATAFLOWS}, got {self.dataflow!r}")
        if self.tile < 0:
            raise ValueError(f"tile must be >= 0 (0: automatic), got {self.tile}")

    def supports(self, dtype: torch.dtype, device: torch.device | str) -> bool:
        """Whether this dataflow runs features of `dtype` on `device` ("fused": floating dtypes on the CPU)."""
        if self.dataflow == "fused":
            return torch.device(device).type == "cpu" and dtype.is_floating_point
        return True


@dataclass(frozen=True)
class ConvConfig:
    """Settings read by every sparse convolution.

    Attributes:
        dataflow: "auto" (fused where it is implemented, else gather_scatter), or one of DATAFLOWS for all layers.
        tile: rows per output tile of the fused dataflow; 0 picks `default_tile` from the output rows and threads.
        plan: per-layer-group choices from `torchsparse.tune`, keyed by `layer_key`; they override dataflow
            and tile for the groups they name.
        timings: if set, every convolution adds its wall time (seconds) under (layer key, choice); used by
            `torchsparse.tune` only.
    """

    dataflow: str = "auto"
    tile: int = 0
    plan: Mapping[str, Choice] = field(default_factory=dict)
    timings: dict | None = None

    def __post_init__(self) -> None:
        if self.dataflow != "auto" and self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be 'auto' or one of {DATAFLOWS}, got {self.dataflow!r}")
        if self.tile < 0:
            raise ValueError(f"tile must be >= 0, got {self.tile}")


_CURRENT: contextvars.ContextVar[ConvConfig] = contextvars.ContextVar("torchsparse_conv_config", default=ConvConfig())


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
