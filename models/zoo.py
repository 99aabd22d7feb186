"""Named models, and loading checkpoints with an error that says exactly what does not fit."""

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from torchsparse.models.minkunet import MinkUNet
from torchsparse.models.spvcnn import SPVCNN
from torchsparse.models.spvnas import SPVNAS

__all__ = [
    "CheckpointMismatchError",
    "get_model",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "register_model",
]

Factory = Callable[..., nn.Module]
Checkpoint = str | os.PathLike | Mapping[str, Any]
Loader = Callable[[nn.Module, Checkpoint], nn.Module]

# The registry is filled once at import (the released variants) and by explicit register_model calls.
_MODELS: dict[str, Factory] = {}
_LOADERS: dict[str, Loader] = {}


def register_model(name: str, factory: Factory | None = None, *, loader: Loader | None = None):
    """Registers `factory(**kwargs) -> nn.Module` under `name`; usable as a decorator.

    Args:
        name: the name `get_model` takes.
        factory: builds the model from keyword arguments.
        loader: ``loader(model, checkpoint)`` loads a checkpoint (a file or a mapping, as given to `get_model`)
            into the model; by default `load_checkpoint`. BEVFusion's reads the official mmcv files.

    Raises:
        ValueError: if the name is taken.
    """

    def add(f: Factory) -> Factory:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = f
        if loader is not None:
            _LOADERS[name] = loader
        return f

    return add(factory) if factory is not None else add


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def get_model(name: str, checkpoint: Checkpoint | None = None, **kwargs) -> nn.Module:
    """Builds a registered model, optionally with weights.

    Args:
        name: one of `list_models()`, e.g. "SemanticKITTI_val_MinkUNet@114GMACs" or "bevfusion_det".
        checkpoint: a checkpoint file or state dict (official files hold it under "model"), loaded by the
            model's loader (see `register_model`). SPVNAS variants take their architecture from it when no
            `config` is given.
        **kwargs: passed to the model's constructor (e.g. num_classes, cr, config).

    Raises:
        ValueError: unknown name; or a checkpoint that does not fit (`CheckpointMismatchError`).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if name in _LOADERS:
        model = _MODELS[name](**kwargs)
        return model if checkpoint is None else _LOADERS[name](model, checkpoint)
    state_dict = read_state_dict(checkpoint) if checkpoint is not None else None
    factory = _MODELS[name]
    if factory is SPVNAS and "config" not in kwargs:
        if state_dict is None:
            raise ValueError(
                f"{name} needs its architecture: pass checkpoint= (the subnet is read from its shapes) or config= "
                "(the search's net.config as a dict)"
            )
        model = SPVNAS.from_state_dict(state_dict, **kwargs)
    else:
        model = factory(**kwargs)
    if state_dict is not None:
        load_checkpoint(model, state_dict)
    return model


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes differ from the model's."""


def read_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """Reads a checkpoint file (or takes a mapping) and returns its state dict.

    Accepts {"model": state_dict} (official SPVNAS files), {"state_dict": ...} and a bare state dict; strips a
    "module." prefix left by DistributedDataParallel. Files are read with weights_only=True on the CPU.

    Raises:
        ValueError: unreadable or corrupt file, or content that is not a state dict.
    """
    source = "checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        if not os.path.isfile(source):
            raise ValueError(f"checkpoint file {source!r} does not exist")
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (torch raises many types for truncated or foreign files)
            raise ValueError(f"cannot read checkpoint {source!r}: {type(error).__name__}: {error}") from None
    if isinstance(checkpoint, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Loads weights strictly, after checking every key and shape.

    Raises:
        CheckpointMismatchError: listing missing, unexpected and mis-shaped keys.
    """
    state_dict = read_state_dict(checkpoint)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not fit {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = "\n    ".join(items[:20]) + (
                    f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
                )
                lines.append(f"  {len(items)} {title} keys:\n    {shown}")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(state_dict)
    return model


for _cr, _minkunet, _spvcnn in ((0.5, 29, 30), (0.64, 46, 47), (1.0, 114, 119)):
    register_model(f"SemanticKITTI_val_MinkUNet@{_minkunet}GMACs", lambda cr=_cr, **kw: MinkUNet(cr=cr, **kw))
    register_model(f"SemanticKITTI_val_SPVCNN@{_spvcnn}GMACs", lambda cr=_cr, **kw: SPVCNN(cr=cr, **kw))
for _macs in (20, 25, 35, 65):
    register_model(f"SemanticKITTI_val_SPVNAS@{_macs}GMACs", SPVNAS)
register_model("MinkUNet", MinkUNet)
register_model("SPVCNN", SPVCNN)
register_model("SPVNAS", SPVNAS)


def _bevfusion(task: str) -> Factory:
    def build(**kwargs) -> nn.Module:
        from torchsparse.models.bevfusion import BEVFusion  # imported on use: it imports this module

        return BEVFusion(task, **kwargs)

    return build


def _load_bevfusion(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    from torchsparse.models.bevfusion import load_official_checkpoint

    return load_official_checkpoint(model, checkpoint)


register_model("bevfusion_det", _bevfusion("det"), loader=_load_bevfusion)
register_model("bevfusion_seg", _bevfusion("seg"), loader=_load_bevfusion)
