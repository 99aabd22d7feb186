"""Per-layer-group autotuning of the convolution dataflow and its parameters, on the inputs' own device."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import platform
from collections.abc import Sequence

import torch

from torchsparse.profiling import timed
from torchsparse.settings import CONV3D, Choice, choose, config
from torchsparse.tensor import PointTensor, SparseTensor
from torchsparse.utils.io import atomic_open

__all__ = ["CANDIDATES", "candidates_for", "device_name", "model_key", "tune"]

#: CPU candidates: per-offset GEMMs, and the fused dataflow at five tile sizes.
CPU_CANDIDATES: tuple[Choice, ...] = (
    Choice("gather_scatter"),
    *(Choice("fused", tile) for tile in (256, 512, 1024, 2048, 4096)),
)
#: CUDA candidates: sorted implicit GEMM (the automatic choice) at 1-4 splits, unsorted at 1-2, and gather-scatter
#: with three offset groupings (none, the default, loose).
CUDA_CANDIDATES: tuple[Choice, ...] = (
    *(Choice("implicit_gemm_sorted", split=s) for s in (1, 2, 3, 4)),
    *(Choice("implicit_gemm", split=s) for s in (1, 2)),
    *(Choice("gather_scatter", group_tolerance=t) for t in (0.25, 0.0, 0.5)),
)
CANDIDATES = CPU_CANDIDATES + CUDA_CANDIDATES


def candidates_for(device: torch.device | str) -> tuple[Choice, ...]:
    """The default candidates of `tune` on a device type; the first is the reference a winner must beat."""
    return CUDA_CANDIDATES if torch.device(device).type == "cuda" else CPU_CANDIDATES


def device_name(device: torch.device | str) -> str:
    """The model of the device: the GPU's name, or the CPU's model name (lscpu's "Model name")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_key(model: torch.nn.Module, inputs: Sequence[object]) -> str:
    """Identifies a model's structure (its module tree) and its inputs' dtype, device type and device model."""
    signature = [
        f"{type(x).__name__}:{x.feats.dtype}:{x.feats.device.type}:{device_name(x.feats.device)}"
        if isinstance(x, SparseTensor) else type(x).__name__
        for x in inputs
    ]
    return hashlib.sha256((repr(model) + repr(signature)).encode()).hexdigest()[:16]


def tune(
    model: torch.nn.Module,
    inputs: Sequence[object],
    path: str | pathlib.Path | None = None,
    candidates: Sequence[Choice] | None = None,
    repeats: int = 3,
) -> dict[str, Choice]:
    """Picks, for every layer group of `model`, the fastest dataflow and parameters on `inputs`.

    Every candidate first runs `model(*inputs)` once untimed (kernel maps, Triton's autotuning, warm caches);
    then `repeats` rounds run every candidate once each, interleaved, under torch.inference_mode, and each
    convolution's time is read from its profiling region (`torchsparse.profiling`; CUDA is synchronised around
    each layer). Per layer group (`torchsparse.nn.functional.layer_key`) the candidate with the smallest median
    wins if its lead over the first candidate exceeds the noise (`settings.choose`), else the first candidate.

    Args:
        model: a network of torchsparse layers.
        inputs: positional arguments of model; SparseTensors among them keep their kernel maps across runs.
        path: JSON file of plans keyed by `model_key` (model structure, dtype, device and its model name), so one
            file serves CPU and GPU entries; a plan found there is returned without timing, a new one is added
            (the file is replaced atomically).
        candidates: choices to time (default: `candidates_for` the inputs' device); those that do not run the
            inputs' dtype on their device (`Choice.supports`) are skipped. Exceptions raised by the model propagate.
        repeats: timed rounds (>= 1).

    Returns:
        {layer key: Choice}, to apply with ``torchsparse.config(plan=...)``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    key = model_key(model, inputs)
    store = _read(path)
    if key in store:
        return {layer: Choice(**choice) for layer, choice in store[key].items()}
    features = _features(inputs)
    if candidates is None:
        candidates = candidates_for(features[0].device if features else "cpu")
    runnable = [c for c in candidates if all(c.supports(f.dtype, f.device) for f in features)]
    if not runnable:
        raise ValueError(f"no candidate runs these inputs ({[(f.dtype, f.device.type) for f in features]})")

    def run(choice: Choice) -> None:
        fields = {f.name: getattr(choice, f.name) for f in dataclasses.fields(Choice)}
        with config(**fields, measure=False):
            model(*inputs)

    with torch.inference_mode():
        for choice in runnable:
            run(choice)
        with timed() as times:
            for _ in range(repeats):
                for choice in runnable:
                    run(choice)
    runs: dict[str, dict[Choice, list[float]]] = {}
    for region_key, seconds in times.items():
        if isinstance(region_key, tuple) and len(region_key) == 3 and region_key[0] == CONV3D:
            runs.setdefault(region_key[1], {})[region_key[2]] = seconds
    plan = {layer: choose(by_choice, runnable[0]) for layer, by_choice in runs.items()}
    if path is not None:
        store[key] = {layer: dataclasses.asdict(c) for layer, c in plan.items()}
        with atomic_open(path) as handle:
            json.dump(store, handle, indent=1, sort_keys=True)
    return plan


def _features(inputs: Sequence[object]) -> list[torch.Tensor]:
    """The feature tensors among the inputs: those of sparse and point tensors, and floating tensors."""
    return [
        x.feats if isinstance(x, (SparseTensor, PointTensor)) else x
        for x in inputs
        if isinstance(x, (SparseTensor, PointTensor)) or (isinstance(x, torch.Tensor) and x.is_floating_point())
    ]


def _read(path) -> dict:
    if path is None or not pathlib.Path(path).exists():
        return {}
    try:
        store = json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a tuning file (invalid JSON: {error})") from error
    if not isinstance(store, dict):
        raise ValueError(f"{path} is not a tuning file (expected a JSON object)")  # noqa: TRY004 (file content)
    return store
