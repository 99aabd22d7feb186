"""SemanticKITTI evaluation: official mIoU (semantic-kitti-api semantics) and SPVNAS's variant, over a split.

Either runs a model over the scans (`--model`, `--checkpoint`) or scores an existing predictions folder
(`--predictions DIR` holding `sequences/NN/predictions/XXXXXX.label`, the benchmark's submission layout).
Under torchrun every process takes every world_size-th scan and the confusion matrices are summed with
torch.distributed (gloo on the CPU, nccl on GPUs), so any process count gives the same numbers.

Usage:
    python tools/evaluate_semantic_kitti.py --root DATA --model SemanticKITTI_val_MinkUNet@114GMACs --checkpoint init
    torchrun --nproc_per_node 2 tools/evaluate_semantic_kitti.py --root DATA --predictions PRED -o results.json
"""

import argparse
import json
import os
import pathlib
import sys

import numpy as np
import torch
import torch.distributed as dist
import torchsparse.models as models
from torchsparse.datasets import (
    OFFICIAL,
    SPVNAS,
    ConfusionMatrix,
    SemanticKITTI,
    format_iou_table,
    get_label_map,
    iou_official,
    iou_spvnas,
)
from torchsparse.datasets.semantic_kitti import read_labels, write_labels
from tqdm import tqdm


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=pathlib.Path, required=True, help="dataset folder holding sequences/")
    parser.add_argument("--sequences", nargs="+", default=["08"], help="sequences to score (default 08, val)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registered model name to run")
    source.add_argument(
        "--predictions", type=pathlib.Path, help="folder with sequences/NN/predictions/*.label"
    )
    parser.add_argument(
        "--checkpoint", type=pathlib.Path, help="weights for --model (random without; says so)"
    )
    parser.add_argument(
        "--label-map", default="spvnas", help="class order the model predicts (spvnas or official)"
    )
    parser.add_argument("--save-predictions", type=pathlib.Path, help="write the model's predictions here")
    parser.add_argument("-o", "--output", type=pathlib.Path, help="JSON file for the results")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    return parser.parse_args(argv)


def prediction_path(folder: pathlib.Path, scan: str) -> pathlib.Path:
    scan_path = pathlib.Path(scan)
    return folder / "sequences" / scan_path.parent.parent.name / "predictions" / f"{scan_path.stem}.label"


def spvnas_result(matrix: np.ndarray) -> dict:
    """SPVNAS's metric from a (20, 20) matrix whose last column holds predictions outside its 19 classes."""
    result = iou_spvnas(matrix, class_names=(*SPVNAS.class_names, "not a class"))
    iou = result["iou"][: SPVNAS.num_classes]
    return {**result, "iou": iou, "miou": float(iou.mean()), "class_names": list(SPVNAS.class_names)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cpu")
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    dataset = SemanticKITTI(args.root, sequences=args.sequences, label_map="official")
    if any(label is None for label in dataset.label_files):
        raise SystemExit("every scan needs ground-truth labels to be scored")
    label_map = get_label_map(args.label_map)
    model = None
    if args.model:
        model = models.get_model(args.model, checkpoint=args.checkpoint).to(device).eval()
        if args.checkpoint is None and rank == 0:
            print("WARNING: no --checkpoint: random weights, the scores are meaningless", file=sys.stderr)

    official = ConfusionMatrix(OFFICIAL.num_classes)
    # One extra prediction column for raw ids SPVNAS does not learn, so that they count as misses.
    spvnas = ConfusionMatrix(SPVNAS.num_classes + 1, ignore_index=SPVNAS.ignore_index)
    shard = range(rank, len(dataset), world)
    for index in tqdm(shard, desc=f"scans (rank {rank}/{world})", disable=rank != 0, unit="scan"):
        scan, label_file = dataset.files[index], dataset.label_files[index]
        truth, _ = read_labels(label_file)
        if model is not None:
            sample = dataset[index]
            with torch.inference_mode():
                voxel_classes = model(sample["lidar"].to(device)).argmax(1).cpu()
            predicted = label_map.to_raw(voxel_classes[sample["inverse_map"]].numpy())
            if args.save_predictions:
                write_labels(prediction_path(args.save_predictions, scan), predicted)
        else:
            predicted, _ = read_labels(prediction_path(args.predictions, scan), num_points=len(truth))
        official.update(OFFICIAL.to_classes(predicted), OFFICIAL.to_classes(truth))
        spvnas_predicted = SPVNAS.to_classes(predicted)
        spvnas_predicted[spvnas_predicted == SPVNAS.ignore_index] = SPVNAS.num_classes
        spvnas.update(spvnas_predicted, SPVNAS.to_classes(truth))

    matrices = torch.from_numpy(np.stack([official.matrix, spvnas.matrix]))
    if distributed:
        matrices = matrices.to(device)
        dist.all_reduce(matrices)
        matrices = matrices.cpu()
    if rank == 0:
        results = {
            "official": iou_official(matrices[0].numpy()),
            "spvnas": spvnas_result(matrices[1].numpy()),
        }
        for result in results.values():
            print(format_iou_table(result), end="\n\n")
        report = {
            "num_scans": len(dataset),
            "sequences": list(dataset.sequences),
            "source": {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None}
            if args.model
            else {"predictions": str(args.predictions)},
            "processes": world,
        }
        for name, result in results.items():
            report[name] = {
                "miou": result["miou"],
                "accuracy": result["accuracy"],
                "iou": dict(zip(result["class_names"], result["iou"].tolist())),
            }
        report["confusion_official"] = matrices[0].tolist()
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=1))
            print(f"results: {args.output}")
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
