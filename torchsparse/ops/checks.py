"""Argument checks shared by the ops' fake kernels (the Python side of csrc/common/checks.h).

Fake kernels run for FakeTensors under torch.compile / torch.export and for tensors on the ``meta`` device. The
dispatcher picks the meta kernel as soon as one argument is on ``meta``, so without this check an op called with
CPU tensors and one meta tensor would return uninitialised CPU memory instead of an error.
"""

import torch
from torch import Tensor

__all__ = ["check_cpu_sizes", "check_same_device", "run_time_check"]


def check_same_device(**tensors: Tensor) -> None:
    """Raises ValueError unless all the named tensors are on one device (the C++ kernels' rule)."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listed}")


def check_cpu_sizes(sizes: Tensor, input: Tensor) -> None:
    """Raises ValueError unless the per-offset pair counts live on the CPU (on meta only for an all-meta call)."""
    if sizes.device.type != "cpu" and not (sizes.device.type == "meta" and input.device.type == "meta"):
        raise ValueError(f"sizes must be a CPU tensor, got one on {sizes.device}")


def run_time_check(name: str):
    """Registers a value check as the op ``torchsparse::<name>`` (an ordered effect; returns None).

    Python cannot branch on tensor values inside a graph compiled by torch.compile, so each check is an operator
    that runs on the real tensors, in eager mode and in compiled graphs alike. It returns nothing, so it is
    registered as an ordered effect: inductor keeps it (an op whose result is unused would be dead code) and runs
    it in program order, before the ops that rely on it. Its cost is one read of the tensors it checks.
    """

    def register(fn):
        op = torch.library.custom_op(f"torchsparse::{name}", fn, mutates_args=())
        op.register_fake(lambda *args: None)
        op.register_effect(torch.library.EffectType.ORDERED)
        return op

    return register
