"""SemanticKITTI evaluation: official mIoU (semantic-kitti-api semantics) and SPVNAS's variant, over a split.

The official figures are semantic-kitti-api's ``evaluate_semantics.py``: per-class IoU, mIoU over classes
1..19 and its accuracy, which leaves labelled points predicted "unlabeled" (0) out of the count; the report
adds ``official.accuracy_all_labelled``, which counts them as wrong.

Either runs a model over the scans (`--model`, `--checkpoint`) or scores an existing predictions folder
(`--predictions DIR` holding `sequences/NN/predictions/XXXXXX.label`, the benchmark's submission layout).
Under torchrun every process takes every world_size-th scan and the confusion matrices are summed with
torch.distributed (gloo on the CPU, nccl on GPUs), so any process count gives the same numbers.

The tool refuses (exit status 2, before any work) to write a file it reads: ``-o`` or a file under
``--save-predictions`` that is a scan, a label file, a prediction being scored or the checkpoint (also through
a symbolic or hard link). Every file is written atomically.

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
from tqdm import tqdm

import torchsparse
from torchsparse import models
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
from torchsparse.tools._cli import (
    InputFiles,
    existing_file,
    existing_folder,
    output_file,
    output_folder,
    positive_int,
    refuse_overwrite,
    registered_model,
)
from torchsparse.utils.io import atomic_open, atomic_path


def build_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing (argparse error, exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=existing_folder, required=True, help="dataset folder holding sequences/"
    )
    parser.add_argument("--sequences", nargs="+", default=["08"], help="sequences to score (default 08, val)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=registered_model, help="registered model name to run")
    source.add_argument(
        "--predictions", type=existing_folder, help="folder with sequences/NN/predictions/*.label"
    )
    parser.add_argument(
        "--checkpoint", type=existing_file, help="weights for --model (random without; says so)"
    )
    parser.add_argument(
        "--label-map",
        default="spvnas",
        type=str.lower,
        choices=("spvnas", "official"),
        help="class order the model predicts (spvnas or official)",
    )
    parser.add_argument("--save-predictions", type=output_folder, help="write the model's predictions here")
    parser.add_argument("-o", "--output", type=output_file, help="JSON file for the results")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    return parser


def check_files(parser: argparse.ArgumentParser, args: argparse.Namespace, dataset: SemanticKITTI) -> None:
    """Refuses (parser.error) unlabelled scans, missing predictions, options that do not apply, and outputs
    that are inputs."""
    unlabelled = [scan for scan, label in zip(dataset.files, dataset.label_files) if label is None]
    if unlabelled:
        parser.error(
            f"argument --sequences: every scan needs ground-truth labels to be scored; {unlabelled[0]} "
            "has none"
        )
    if args.model is None and (args.checkpoint is not None or args.save_predictions is not None):
        parser.error("--checkpoint and --save-predictions need --model")
    inputs = InputFiles()
    inputs.add_all("a scan", dataset.files)
    inputs.add_all("a ground-truth label file", dataset.label_files)
    inputs.add("the checkpoint", args.checkpoint)
    if args.predictions is not None:
        predictions = [prediction_path(args.predictions, scan) for scan in dataset.files]
        missing = [path for path in predictions if not path.is_file()]
        if missing:
            parser.error(
                f"argument --predictions: {len(missing)} of {len(predictions)} scans have no prediction, "
                f"e.g. {missing[0]} does not exist"
            )
        inputs.add_all("a prediction file", predictions)
    if args.output is not None:
        refuse_overwrite(parser, "-o/--output", [args.output], inputs)
    if args.save_predictions is not None:
        outputs = [prediction_path(args.save_predictions, scan) for scan in dataset.files]
        refuse_overwrite(parser, "--save-predictions", outputs, inputs)


def prediction_path(folder: pathlib.Path, scan: str) -> pathlib.Path:
    scan_path = pathlib.Path(scan)
    return folder / "sequences" / scan_path.parent.parent.name / "predictions" / f"{scan_path.stem}.label"


def spvnas_result(matrix: np.ndarray) -> dict:
    """SPVNAS's metric from a (20, 20) matrix whose last column holds predictions outside its 19 classes."""
    result = iou_spvnas(matrix, class_names=(*SPVNAS.class_names, "not a class"))
    iou = result["iou"][: SPVNAS.num_classes]
    return {**result, "iou": iou, "miou": float(iou.mean()), "class_names": list(SPVNAS.class_names)}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = SemanticKITTI(args.root, sequences=args.sequences, label_map="official")
    except ValueError as error:
        parser.error(f"argument --root/--sequences: {error}")
    check_files(parser, args, dataset)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cpu")
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    label_map = get_label_map(args.label_map)
    model = None
    if args.model:
        try:
            model = models.get_model(args.model, checkpoint=args.checkpoint).to(device).eval()
        except ValueError as error:
            parser.error(f"argument --checkpoint: {error}")
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
            # Scores must not depend on timing: the automatic dataflow without measuring (see evaluate_nuscenes).
            with torch.inference_mode(), torchsparse.config(measure=False):
                voxel_classes = model(sample["lidar"].to(device)).argmax(1).cpu()
            predicted = label_map.to_raw(voxel_classes[sample["inverse_map"]].numpy())
            if args.save_predictions:
                with atomic_path(prediction_path(args.save_predictions, scan)) as tmp:
                    write_labels(tmp, predicted)
        else:
            try:
                predicted, _ = read_labels(prediction_path(args.predictions, scan), num_points=len(truth))
            except ValueError as error:
                parser.error(f"argument --predictions: {error}")
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
            print(format_iou_table(result))
            if "accuracy_all_labelled" in result:
                # The official accuracy leaves labelled points predicted 0 out; this one counts them wrong.
                print(f"accuracy over all labelled points  {100 * result['accuracy_all_labelled']:5.1f}")
            print()
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
                **({"accuracy_all_labelled": result["accuracy_all_labelled"]} if name == "official" else {}),
                "iou": dict(zip(result["class_names"], result["iou"].tolist())),
            }
        report["confusion_official"] = matrices[0].tolist()
        if args.output:
            with atomic_open(args.output) as handle:
                json.dump(report, handle, indent=1)
            print(f"results: {args.output}")
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
