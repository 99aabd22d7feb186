"""Converts older SPVNAS-family checkpoints into the layout our models load.

Handles what differs in practice: weights wrapped as {"model": ...} or {"state_dict": ...}, the "module."
prefix of DistributedDataParallel, and SPVNAS *supernet* checkpoints (keys such as
`downsample.0.feature.layers.0.net.layers.0.net.bn.bn.weight`), which are determinized for a subnet's
net.config: renamed to the released subnet keys and sliced to the subnet's widths (the first channels, as the
supernet's dynamic layers use them). MinkUNet and SPVCNN checkpoints of TorchSparse v1.x already share the
v2.1 layout ((K, C_in, C_out) kernels, (C_in, C_out) for 1x1x1); they only pass through the unwrapping.
The output is written atomically, never onto the checkpoint or the net.config it reads (exit status 2).

Usage:
    python tools/convert_checkpoint.py SUPERNET_INIT --net-config net.config -o subnet.pt
"""

import argparse
import json
import re
import sys

import torch
from torch import Tensor

from torchsparse.models import SPVNAS, load_checkpoint, read_state_dict
from torchsparse.tools._cli import InputFiles, existing_file, output_file, refuse_overwrite
from torchsparse.utils.io import atomic_path

_RENAMES = (
    (re.compile(r"\.layers\.(\d+)\."), r".\1."),
    (re.compile(r"\.bn\.bn\."), ".bn."),
    (re.compile(r"\.conv\.linear\."), ".conv."),
)


def is_supernet(state_dict: dict[str, Tensor]) -> bool:
    return any(".bn.bn." in key or ".feature.layers." in key for key in state_dict)


def determinize(supernet: dict[str, Tensor], net_config: dict) -> dict[str, Tensor]:
    """Subnet state dict from a supernet one: keys renamed, every tensor sliced to its first channels.

    Raises:
        ValueError: when the supernet lacks a key of the subnet or is narrower than it.
    """
    renamed = {}
    for key, value in supernet.items():
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    target = SPVNAS(net_config).state_dict()
    out = {}
    for key, like in target.items():
        if key not in renamed:
            raise ValueError(f"supernet checkpoint has no weights for the subnet's {key!r}")
        value = renamed[key]
        if value.dim() != like.dim() or any(s < t for s, t in zip(value.shape, like.shape)):
            raise ValueError(
                f"{key!r}: supernet shape {list(value.shape)} cannot hold subnet shape {list(like.shape)}"
            )
        out[key] = value[tuple(slice(0, n) for n in like.shape)].clone()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=existing_file)
    parser.add_argument("-o", "--output", type=output_file, required=True)
    parser.add_argument(
        "--net-config", type=existing_file, help="the subnet's net.config (supernet checkpoints)"
    )
    args = parser.parse_args(argv)
    inputs = InputFiles()
    inputs.add("the checkpoint", args.checkpoint)
    inputs.add("the net config", args.net_config)
    refuse_overwrite(parser, "-o/--output", [args.output], inputs)
    try:
        state_dict = read_state_dict(args.checkpoint)
    except ValueError as error:
        parser.error(f"argument checkpoint: {error}")
    if is_supernet(state_dict):
        if args.net_config is None:
            parser.error(
                f"argument --net-config: {args.checkpoint} is an SPVNAS supernet checkpoint: pass the "
                "subnet's net.config"
            )
        try:
            config = json.loads(args.net_config.read_text())
            state_dict = determinize(state_dict, config)
            load_checkpoint(SPVNAS(config), state_dict)  # proves the result loads
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            parser.error(f"argument --net-config: {args.net_config}: {type(error).__name__}: {error}")
        print(f"determinized the supernet for {args.net_config}: {len(state_dict)} tensors")
    elif args.net_config is not None:
        parser.error(
            f"argument --net-config: {args.checkpoint} is not a supernet checkpoint; drop --net-config"
        )
    with atomic_path(args.output) as tmp:
        torch.save({"model": state_dict}, tmp)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
