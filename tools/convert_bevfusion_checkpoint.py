"""Converts an official BEVFusion detection checkpoint into our native layout, checked against the model.

Official files (mmcv: {"meta", "state_dict", "optimizer"}) pickle configuration objects next to the weights,
which torch's safe loader refuses; `--trust` reads such a file with the full unpickler, so use it only on files
from a source you trust. The output holds {"model": state_dict} with the LiDAR encoder's spconv weights
(kx, ky, kz, C_in, C_out) stored as our kernels (K, C_in, C_out); it loads with weights_only=True and
`load_official_checkpoint` accepts both layouts. The output is written atomically, never onto the input (exit
status 2).

Usage:
    python tools/convert_bevfusion_checkpoint.py bevfusion-det.pth --trust -o bevfusion-det-native.pth
"""

import argparse
import sys

import torch

from torchsparse.models.bevfusion import BEVFusion, load_official_checkpoint, native_state_dict
from torchsparse.models.zoo import read_state_dict
from torchsparse.tools._cli import InputFiles, existing_file, output_file, refuse_overwrite
from torchsparse.utils.io import atomic_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=existing_file)
    parser.add_argument("-o", "--output", type=output_file, required=True)
    parser.add_argument("--trust", action="store_true", help="unpickle the official file's metadata (trusted files only)")
    parser.add_argument("--task", default="det", choices=("det", "seg"))
    args = parser.parse_args(argv)
    inputs = InputFiles()
    inputs.add("the checkpoint", args.checkpoint)
    refuse_overwrite(parser, "-o/--output", [args.output], inputs)
    try:
        source = args.checkpoint
        if args.trust:
            try:
                source = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
            except Exception as error:  # torch raises many types for truncated or foreign files
                raise ValueError(f"cannot read {args.checkpoint}: {type(error).__name__}: {error}") from None
            source = read_state_dict(source)
        model = BEVFusion(args.task)
        load_official_checkpoint(model, source)  # raises with the list of keys that do not fit
    except ValueError as error:
        parser.error(f"argument checkpoint: {error}")
    with atomic_path(args.output) as tmp:
        torch.save({"model": native_state_dict(model)}, tmp)
    print(f"{args.checkpoint} -> {args.output} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
