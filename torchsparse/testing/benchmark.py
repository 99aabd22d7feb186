"""Timing, tables, CSV and PNG output shared by the benchmarks in benchmarks/."""

import csv
import pathlib
from collections.abc import Callable, Sequence

import torch
from torch.utils.benchmark import Timer

__all__ = ["bar_chart", "gflops", "median_ms", "print_table", "to_spconv_weight", "write_csv"]


def median_ms(fn: Callable[[], object], runs: int = 7, warmup: int = 2) -> float:
    """Median wall time of `fn()` in milliseconds over `runs` (>= 5) timed calls after `warmup` calls.

    Uses torch.utils.benchmark.Timer (which synchronises CUDA around each call) with the current
    torch.get_num_threads(); the Timer's own default would be one thread.
    """
    for _ in range(warmup):
        fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = sorted(timer.timeit(number=1).median for _ in range(max(runs, 5)))
    return times[len(times) // 2] * 1e3


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Prints rows as an aligned text table; floats with 2 decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Writes rows to a CSV file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def bar_chart(path: pathlib.Path, labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str) -> bool:
    """Grouped bar chart (one group per label, one bar per series) saved as PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written (pip install matplotlib)")
        return False
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4))
    for s, (name, values) in enumerate(series.items()):
        ax.bar([i + s * width for i in range(len(labels))], values, width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels, rotation=30, ha="right")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def gflops(macs: int, ms: float) -> float:
    """GFLOP/s of `macs` multiply-accumulates (2 FLOPs each) done in `ms` milliseconds."""
    return 2.0 * macs / ms / 1e6



def to_spconv_weight(weight: torch.Tensor, kernel_size) -> torch.Tensor:
    """Our (K, C_in, C_out) weight, offsets in torchsparse order, as spconv 2.x's (C_out, kx, ky, kz, C_in).

    spconv's 1x1x1 layers read that buffer as a row-major (C_in, C_out) matrix instead, so a single-offset weight
    is laid out that way.
    """
    from torchsparse.testing.references import kernel_indices

    c_in, c_out = weight.shape[-2:]
    weight = weight.reshape(-1, c_in, c_out)
    if weight.shape[0] == 1:
        return weight[0].contiguous().reshape(c_out, 1, 1, 1, c_in)
    dense = weight.new_zeros((c_out, *kernel_size, c_in))
    for index, (ix, iy, iz) in enumerate(kernel_indices(kernel_size)):
        dense[:, ix, iy, iz, :] = weight[index].T
    return dense
