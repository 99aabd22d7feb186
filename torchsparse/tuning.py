"""Per-layer-group autotuning of the convolution dataflow and tile size."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import statistics
from collections.abc import Sequence

import torch

from torchsparse.settings import Choice, config
from torchsparse.tensor import PointTensor, SparseTensor

__all__ = ["CANDIDATES", "model_key", "tune"]

CANDIDATES: tuple[Choice, ...] = (
    Choice("gather_scatter"),
    *(Choice("fused", tile) for tile in (256, 512, 1024, 2048, 4096)),
)


def model_key(model: torch.nn.Module, inputs: Sequence[object]) -> str:
    """Identifies a model's structure (its module tree) and its inputs' dtype and device."""
    signature = [
        f"{type(x).__name__}:{x.feats.dtype}:{x.feats.device.type}" if isinstance(x, SparseTensor) else type(x).__name__
        for x in inputs
    ]
    return hashlib.sha256((repr(model) + repr(signature)).encode()).hexdigest()[:16]


def tune(
    model: torch.nn.Module,
    inputs: Sequence[object],
    path: str | pathlib.Path | None = None,
    candidates: Sequence[Choice] = CANDIDATES,
    repeats: int = 3,
) -> dict[str, Choice]:
    """Picks, for every layer group of `model`, the fastest dataflow and tile on `inputs`.

    Every candidate runs `model(*inputs)` `repeats` + 1 times (the first only builds kernel maps and warms up)
    under torch.inference_mode; each convolution's time is recorded under its layer group
    (`torchsparse.nn.functional.layer_key`) and the candidate with the smallest median wins per group.

    Args:
        model: a network of torchsparse layers.
        inputs: positional arguments of model; SparseTensors among them keep their kernel maps across runs.
        path: JSON file of plans keyed by `model_key`; a plan found there is returned without timing, a new one
            is added to the file.
        candidates: choices to time; those that do not support the dtype or device of the inputs' features
            (`Choice.supports`) are skipped. Any exception raised while running the model propagates.
        repeats: timed runs per candidate (>= 1).

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
    timings: dict[str, dict[Choice, list[float]]] = {}
    with torch.inference_mode():
        for choice in candidates:
            if not all(choice.supports(f.dtype, f.device) for f in features):
                continue
            with config(dataflow=choice.dataflow, tile=choice.tile):
                model(*inputs)
                with config(timings=timings):
                    for _ in range(repeats):
                        model(*inputs)
    plan = {layer: min(runs, key=lambda c: statistics.median(runs[c])) for layer, runs in timings.items()}
    if path is not None:
        store[key] = {layer: dataclasses.asdict(c) for layer, c in plan.items()}
        pathlib.Path(path).write_text(json.dumps(store, indent=1, sort_keys=True))
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
        raise ValueError(f"{path} is not a tuning file (expected a JSON object)")
    return store
