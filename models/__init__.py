"""Model zoo built on torchsparse, imported as torchsparse.models: MinkUNet, SPVCNN and SPVNAS (SemanticKITTI
segmentation, official SPVNAS checkpoints load) and BEVFusion (torchsparse.models.bevfusion: nuScenes detection
and map segmentation, official checkpoints load), with a registry of the released variants (`list_models`,
`get_model`)."""

from torchsparse.models.minkunet import MinkUNet, num_parameters
from torchsparse.models.spvcnn import SPVCNN
from torchsparse.models.spvnas import SPVNAS, infer_spvnas_config
from torchsparse.models.zoo import (
    CheckpointMismatchError,
    get_model,
    list_models,
    load_checkpoint,
    read_state_dict,
    register_model,
)

__all__ = [
    "SPVCNN",
    "SPVNAS",
    "CheckpointMismatchError",
    "MinkUNet",
    "get_model",
    "infer_spvnas_config",
    "list_models",
    "load_checkpoint",
    "num_parameters",
    "read_state_dict",
    "register_model",
]
