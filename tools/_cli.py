"""What the command-line tools share: argparse value types and the refusal to overwrite an input.

Every bad option value ends in ``parser.error`` (usage, a message naming the option, exit status 2), never in
a traceback or a silently ignored value. The types below run while argparse parses; `refuse_overwrite` runs
once the tool knows which files it will read and write, before any work.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from torchsparse.utils.io import InputFiles

__all__ = [
    "InputFiles",
    "device",
    "existing_file",
    "existing_folder",
    "finite_float",
    "int_in_range",
    "non_negative_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "refuse_overwrite",
    "registered_model",
]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def int_in_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for integers in [low, high] (None: unbounded on that side)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                bound = "a positive integer" if low == 1 else f"an integer >= {low}"
            elif low is None:
                bound = f"an integer <= {high}"
            else:
                bound = f"an integer from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def positive_int(text: str) -> int:
    """An argparse type for integers >= 1 (thread, repeat and worker counts)."""
    return int_in_range(1)(text)


def non_negative_int(text: str) -> int:
    """An argparse type for integers >= 0."""
    return int_in_range(0)(text)


def finite_float(text: str) -> float:
    """An argparse type for finite floats (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type for finite floats > 0 (voxel sizes)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def existing_file(text: str) -> Path:
    """An argparse type for a file that must exist (checkpoints, scans, labels, configs)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return path


def existing_folder(text: str) -> Path:
    """An argparse type for a folder that must exist (dataset roots, prediction folders)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


def output_file(text: str) -> Path:
    """An argparse type for a file to write: anything but an existing folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    return path


def output_folder(text: str) -> Path:
    """An argparse type for a folder to write into: anything but an existing non-folder."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return path


def device(text: str) -> torch.device:
    """An argparse type for a torch device that this machine has ("cpu", "cuda", "cuda:1", ...)."""
    try:
        value = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if value.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available")
        if value.index is not None and value.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s)")
    elif value.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda devices are supported")
    return value


def registered_model(text: str) -> str:
    """An argparse type for a point-cloud segmentation model of `torchsparse.models.list_models()` (BEVFusion's
    camera + LiDAR models, also registered, run in torchsparse-detect)."""
    from torchsparse.models import list_models

    names = [name for name in list_models() if not name.startswith("bevfusion_")]
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; available: {', '.join(names)}")
    return text


def refuse_overwrite(
    parser: argparse.ArgumentParser,
    option: str,
    outputs: Iterable[str | os.PathLike],
    inputs: InputFiles,
) -> None:
    """Exits through ``parser.error`` (status 2) when an output file would overwrite an input.

    Call it before any work, with every file the run will write. Other files in the output folder, and new
    ones, are fine.

    Args:
        parser: the tool's parser (for its usage line and program name).
        option: the option that names the outputs, as argparse prints it, e.g. "-o/--output".
        outputs: the files the run will write.
        inputs: the files the run reads.
    """
    for output in outputs:
        hit = inputs.clash(output)
        if hit is not None:
            what, source = hit
            same = "" if os.fspath(source) == os.fspath(output) else f" (the same file as {output})"
            parser.error(
                f"argument {option}: refusing to write {output}: it would overwrite {what} {source}{same}, "
                "which this run reads; choose another output"
            )
