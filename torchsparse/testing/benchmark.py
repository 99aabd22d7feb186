"""Timing, tables, CSV and PNG output shared by the benchmarks in benchmarks/."""

import csv
import ctypes
import functools
import gc
import math
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.benchmark import Timer

__all__ = [
    "bar_chart", "cpu_description", "device_description", "gflops", "interleaved_medians_ms", "median_ms",
    "peak_memory_mb", "print_table", "spconv_unavailable", "tflops", "to_spconv_weight", "write_csv",
]

# ISA extensions that decide which CPU kernels can run fast (lscpu / /proc/cpuinfo flag names).
ISA_FLAGS = (
    ("AVX2", ("avx2",)),
    ("AVX-512", ("avx512f",)),
    ("AVX512_BF16", ("avx512_bf16",)),
    ("AVX512_FP16", ("avx512_fp16",)),
    ("AMX", ("amx_tile", "amx_bf16", "amx_fp16", "amx_int8")),
)


@functools.lru_cache(maxsize=1)
def cpu_description() -> str:
    """The CPU model (lscpu "Model name", else /proc/cpuinfo, else platform) and which of AVX2, AVX-512,
    AVX512_BF16, AVX512_FP16 and AMX its flags list, e.g. "Intel(R) Xeon(R) Processor, 2 CPUs, AVX2 yes, AVX-512
    yes, AVX512_BF16 yes, AVX512_FP16 yes, AMX no". AMX lists the AMX flags present (amx_tile, amx_bf16, ...)."""
    fields: dict[str, str] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    except (OSError, subprocess.SubprocessError):
        pass
    if "Model name" not in fields or "Flags" not in fields:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    key = {"model name": "Model name", "flags": "Flags"}.get(key.strip())
                    if key and key not in fields:
                        fields[key] = value.strip()
        except OSError:
            pass
    model = fields.get("Model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "CPU family" in fields and "Model" in fields:
        model += f" (family {fields['CPU family']} model {fields['Model']})"
    flags = set(fields.get("Flags", "").split())
    isa = []
    for name, needed in ISA_FLAGS:
        present = [f for f in needed if f in flags]
        if name == "AMX":
            isa.append(f"AMX {' '.join(present) if present else 'no'}")
        else:
            isa.append(f"{name} {'yes' if present else 'no'}" if flags else f"{name} unknown")
    return f"{model}, {torch.get_num_threads()} torch threads of {fields.get('CPU(s)', '?')} CPUs, {', '.join(isa)}"


def device_description(device: torch.device | str) -> str:
    """The accelerator that `device` names, e.g. "NVIDIA H200, sm_90, 132 SMs, 139.8 GiB, torch 2.11.0+cu130,
    CUDA 13.0, triton 3.8.0"; `cpu_description()` for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_description()
    props = torch.cuda.get_device_properties(device)
    try:
        import triton

        triton_version = f", triton {triton.__version__}"
    except ImportError:
        triton_version = ", no triton"
    return (f"{props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.1f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}{triton_version}")


def spconv_unavailable(device: torch.device | str) -> str | None:
    """Why spconv 2.x cannot run on `device` ("not importable", "CPU-only build"), or None when it can."""
    try:
        import spconv.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # a build for another CUDA or torch fails with the latter two
        return "not importable"
    if torch.device(device).type == "cuda":
        try:
            from spconv.cppconstants import CPU_ONLY_BUILD
        except ImportError:
            CPU_ONLY_BUILD = False
        if CPU_ONLY_BUILD:
            return "CPU-only build"
    return None


def interleaved_medians_ms(fns: Mapping[str, Callable[[], object]], runs: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median wall time (ms) of each callable over `runs` rounds; each round calls every callable once, in turn,
    so that load changes on a shared machine hit all of them alike. `warmup` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(runs, 1)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return math.nan


def _release_free_memory() -> None:
    """Returns freed heap pages to the OS (glibc malloc_trim), so that memory freed by earlier work is not
    counted as resident before a measurement and silently reused during it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory (MiB) added by one call of fn: the process's high-water mark (VmHWM, reset through
    /proc/self/clear_refs) during the call minus its resident size (VmRSS) before, after freed heap memory was
    returned to the OS (glibc malloc_trim). Linux only; NaN elsewhere. The result of fn is released before
    returning."""
    gc.collect()
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        result = fn()
        peak = _status_kb("VmHWM")
    except OSError:
        return math.nan
    del result
    return (peak - before) / 1024


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


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], machine: bool = True, device: torch.device | str = "cpu"
) -> None:
    """Prints rows as an aligned text table; floats with 2 decimals. Preceded by a line naming the CPU and its ISA
    (`cpu_description`), and for a CUDA `device` one naming the GPU (`device_description`), unless machine=False
    (tables whose numbers do not depend on the machine)."""
    if machine:
        print(f"[{cpu_description()}]")
        if torch.device(device).type == "cuda":
            print(f"[{device_description(device)}]")
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


def tflops(macs: int, ms: float) -> float:
    """TFLOP/s of `macs` multiply-accumulates (2 FLOPs each) done in `ms` milliseconds."""
    return 2.0 * macs / ms / 1e9


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
