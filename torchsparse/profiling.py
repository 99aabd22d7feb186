"""Named wall-clock regions: one mechanism for the tuner, the tools and the benchmarks.

    with torchsparse.profiling.timed() as times:    # collects every region entered inside the block
        model(x)
    times["lidar.backbone"]                          # [seconds, ...], one entry per time the region ran

Every region is also a ``torch.profiler.record_function`` range, so torch.profiler traces show the same names.
While a collector is active a region synchronises the device it is given before and after (CUDA kernels run
asynchronously), so its time is the time the work took; without one it costs a profiler range and nothing else.
Collectors live in a context variable (per thread / task), never in module state; an inner `timed` block
shadows an outer one.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Hashable, Iterator

import torch

__all__ = ["named_ms", "region", "stopwatch", "timed"]

_COLLECTOR: contextvars.ContextVar[dict | None] = contextvars.ContextVar("torchsparse_timings", default=None)


@contextlib.contextmanager
def timed() -> Iterator[dict[Hashable, list[float]]]:
    """Collects the wall time (seconds) of every `region` run inside the block, by region key."""
    collector: dict[Hashable, list[float]] = {}
    token = _COLLECTOR.set(collector)
    try:
        yield collector
    finally:
        _COLLECTOR.reset(token)


@contextlib.contextmanager
def region(key: Hashable, device: torch.device | str | None = None, label: str | None = None) -> Iterator[None]:
    """Times the block under `key` when a `timed` collector is active.

    Args:
        key: the collector's key (a name, or any hashable such as (layer, choice)).
        device: synchronised before and after when it is a CUDA device and a collector is active.
        label: the torch.profiler range name (default: str(key)).
    """
    collector = None if torch.compiler.is_compiling() else _COLLECTOR.get()
    with torch.profiler.record_function(label if label is not None else str(key)):
        if collector is None:
            yield
            return
        with stopwatch(device) as seconds:
            yield
        collector.setdefault(key, []).extend(seconds)


@contextlib.contextmanager
def stopwatch(device: torch.device | str | None = None) -> Iterator[list[float]]:
    """Yields a list that receives the block's wall time in seconds, `device` synchronised before and after."""
    seconds: list[float] = []
    _synchronize(device)
    start = time.perf_counter()
    yield seconds
    _synchronize(device)
    seconds.append(time.perf_counter() - start)


def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def named_ms(times: dict[Hashable, list[float]]) -> dict[str, float]:
    """Milliseconds per named region (string keys), summed over its runs, in the order the regions first ran."""
    return {key: sum(seconds) * 1e3 for key, seconds in times.items() if isinstance(key, str)}
