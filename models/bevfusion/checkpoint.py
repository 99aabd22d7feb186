"""Official BEVFusion checkpoints: reading the mmcv-style file and loading it with a clear report."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from torchsparse.models.bevfusion.lidar import SpconvLayoutConv3d, to_spconv_layout
from torchsparse.models.zoo import load_checkpoint, read_state_dict

__all__ = ["load_official_checkpoint", "native_state_dict", "read_official_state_dict"]


def read_official_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict of an official BEVFusion `.pth` (mmcv layout {"meta", "state_dict", "optimizer"}), a
    converted {"model": ...} file, or a mapping.

    Official files pickle mmcv metadata next to the tensors; they are read with weights_only=True first and,
    only if that fails on such metadata, the error says how to convert the file once with
    tools/convert_bevfusion_checkpoint.py --trust.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint file {path!r} does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # mmcv meta (numpy, config objects) is refused by the safe unpickler
            raise ValueError(
                f"cannot read {path!r} safely ({type(error).__name__}: {str(error).splitlines()[0]}); if you trust "
                "the file, convert it once: python tools/convert_bevfusion_checkpoint.py --trust "
                f"{path} -o converted.pth"
            ) from None
    return read_state_dict(checkpoint)


def load_official_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Loads an official (or converted) BEVFusion checkpoint into `model`.

    The LiDAR encoder's 5-D spconv weights (kx, ky, kz, C_in, C_out) are converted to our kernel layout by its
    state-dict hooks; every other key maps one to one.

    Raises:
        CheckpointMismatchError: listing missing, unexpected and mis-shaped keys.
    """
    state_dict = read_official_state_dict(checkpoint)
    for name, module in model.named_modules():
        kernel = state_dict.pop(f"{name}.kernel", None) if isinstance(module, SpconvLayoutConv3d) else None
        if kernel is not None:  # a checkpoint in our native layout
            state_dict[f"{name}.weight"] = to_spconv_layout(kernel, module.kernel_size)
    return load_checkpoint(model, state_dict)


def native_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors in our native layout: the LiDAR convs' `kernel` (K, C_in, C_out) in our offset order
    instead of the official 5-D `weight`; everything else as in `state_dict()`."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, SpconvLayoutConv3d):
            del state[f"{name}.weight"]
            state[f"{name}.kernel"] = module.kernel.detach().clone()
    return state
