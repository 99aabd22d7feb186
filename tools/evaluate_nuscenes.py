"""nuScenes detection evaluation of BEVFusion with the official nuscenes-devkit (NDS, mAP, TP errors).

Runs BEVFusion("det") over a split (default: the cached synthetic set's mini_val, see `torchsparse.datasets.synthetic_nuscenes`), writes the
predictions in the devkit's results format (``results_nusc.json``: global frame, nuScenes yaw, attributes by
the velocity rule, every sample of the split present) and scores them with the devkit's ``DetectionEval``
(detection_cvpr_2019 configuration): NDS, mAP, per-class AP and TP errors are printed as a table and written
to ``metrics.json`` (the devkit's own ``metrics_summary.json`` / ``metrics_details.json`` sit beside it).
``--results FILE`` scores an existing results file instead of running the model. The tool refuses (exit status
2, before any work) to write onto a file it reads (the results file, a table or sample file, the checkpoint);
every file it writes, the devkit's included, is written atomically.

Under torchrun every process infers every world_size-th sample, the records are gathered on rank 0 (gloo on
CPU) and rank 0 evaluates; the result equals one process's.

Splits are those of nuscenes-devkit 1.2.0's ``DetectionEval``: a predefined name (mini_val, val, ...; the
version must match it, as the devkit asserts) or a custom split of ``<root>/<version>/splits.json``, so custom
databases with their own version, scene and split names are evaluated too. The official versions default
``--split`` to mini_val / val / test; any other version needs ``--split``. Scenes of a split that the database
lacks are skipped, as by the devkit. Install the devkit with the ``nuscenes`` extra (see the README).

Scoring (``--results``) needs no cameras; running the model needs the six cameras BEVFusion reads, so a
LiDAR-only database is refused (exit status 2) unless ``--results`` is given.

Usage:
    python tools/evaluate_nuscenes.py [--root ROOT] [--version v1.0-mini] [--split mini_val] [--checkpoint FILE]
                                      [-o DIR] [--results FILE] [--threads N]
    torchrun --nproc_per_node 2 tools/evaluate_nuscenes.py ...
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

import torchsparse
from torchsparse.datasets.nuscenes import (
    DETECTION_CLASSES,
    MODEL_INPUTS,
    RESULTS_META,
    NuScenes,
    collate_nuscenes,
    custom_splits,
    default_split,
    detection_results,
)
from torchsparse.tools._cli import InputFiles, existing_file, output_folder, refuse_overwrite
from torchsparse.tools._nuscenes_cli import add_model_arguments, build_detector, dataset_root, open_dataset
from torchsparse.utils.io import atomic_open, staged_files

TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# What the devkit's DetectionEval writes into its output folder (besides an empty plots/ folder).
DEVKIT_FILES = ("metrics_summary.json", "metrics_details.json")
INSTALL_HINT = (
    'pip install -e ".[nuscenes]" && pip install --no-deps nuscenes-devkit==1.2.0 '
    "(the devkit pins numpy < 2 but runs with numpy 2)"
)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing (argparse error, exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", type=output_folder, default=pathlib.Path("nuscenes_eval"),
                        help="folder for results_nusc.json and the metrics (default %(default)s)")
    parser.add_argument("--results", type=existing_file,
                        help="score this results JSON instead of running the model")
    return parser


# The devkit's load_gt: a predefined split is evaluated only on a version with this suffix (else it asserts).
SPLIT_VERSION_SUFFIX = {"train": "trainval", "val": "trainval", "train_detect": "trainval",
                        "train_track": "trainval", "mini_train": "mini", "mini_val": "mini", "test": "test"}


def check_split(root: pathlib.Path, version: str, split: str | None) -> str:
    """The split to evaluate, checked as the devkit's DetectionEval will use it, before any inference.

    Returns:
        ``split``, or for None the official version's default (`default_split`).

    Raises:
        ValueError: no split for a custom version, a predefined split on a version the devkit refuses for it,
            or a name that is neither predefined nor in ``<root>/<version>/splits.json``.
        SystemExit: nuscenes-devkit is not installed.
    """
    try:
        from nuscenes.utils.splits import create_splits_scenes
    except ImportError:
        raise SystemExit(f"nuscenes-devkit is not installed: {INSTALL_HINT}") from None
    custom = custom_splits(root, version)
    if split is None:
        try:
            return default_split(version)
        except ValueError as error:
            raise ValueError(f"{error} ({root / version / 'splits.json'} has {sorted(custom)})") from None
    predefined = create_splits_scenes()
    if split in predefined:  # the devkit checks predefined names first, whatever splits.json says
        suffix = SPLIT_VERSION_SUFFIX.get(split)
        if suffix is None or not version.endswith(suffix):
            raise ValueError(
                f"nuscenes-devkit evaluates its predefined split {split!r} only on a version ending in "
                f"{suffix!r}, not {version!r}; a custom database names its splits in splits.json"
            )
        return split
    if split not in custom:
        raise ValueError(
            f"split {split!r} is neither a predefined nuscenes-devkit split ({sorted(predefined)}) nor in "
            f"{root / version / 'splits.json'} ({sorted(custom) if custom else 'no such file or no splits'})"
        )
    return split


def predict(args: argparse.Namespace, dataset: NuScenes, rank: int, world: int,
            parser: argparse.ArgumentParser | None = None) -> dict[str, list[dict]] | None:
    """Runs the model on this rank's samples; rank 0 returns every sample's records in split order."""
    model = build_detector(args.checkpoint, args.seed, loud=rank == 0, parser=parser)
    records = {}
    shard = range(rank, len(dataset), world)
    # Scores must not depend on timing: the automatic dataflow without measuring, so that any process count and
    # any machine load give the same detections (measured choices may differ per process, to rounding).
    with torch.inference_mode(), torchsparse.config(measure=False):
        for index in tqdm(shard, desc=f"samples (rank {rank}/{world})", disable=rank != 0, unit="sample"):
            batch = collate_nuscenes([dataset[index]])
            (result,) = model(**{k: batch[k] for k in MODEL_INPUTS})
            token = batch["sample_token"][0]
            records[token] = detection_results(
                token, result["boxes"].double(), result["scores"].double(), result["labels"],
                batch["lidar2ego"][0].double(), batch["ego2global"][0].double(),
            )
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        for part in gathered[1:]:
            records.update(part)
    if rank != 0:
        return None
    return {token: records[token] for token in dataset.sample_tokens}


def evaluate(root: pathlib.Path, version: str, split: str, results_path: pathlib.Path,
             output: pathlib.Path) -> dict:
    """The devkit's DetectionEval of ``results_path``; returns {"mAP", "NDS", "AP", "TP", "TP per class", ...}."""
    from nuscenes import NuScenes
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    try:
        results = json.loads(pathlib.Path(results_path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read results file {results_path}: {e}") from None
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict) or "meta" not in results:
        raise SystemExit(f"{results_path} is not a nuScenes results file ({{'meta': ..., 'results': {{...}}}})")
    # The devkit prints its own tables and progress bars.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
        try:
            evaluator = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(results_path), split,
                                      str(output), verbose=False)
        except (AssertionError, KeyError, TypeError, ValueError) as e:
            raise SystemExit(f"nuscenes-devkit rejected {results_path} for split {split!r}: {e!r}") from None
        summary = evaluator.main(plot_examples=0, render_curves=False)
    return {
        "mAP": summary["mean_ap"],
        "NDS": summary["nd_score"],
        "AP": {name: summary["mean_dist_aps"][name] for name in DETECTION_CLASSES},
        "TP": {metric: summary["tp_errors"][metric] for metric in TP_METRICS},
        "TP per class": {name: summary["label_tp_errors"][name] for name in DETECTION_CLASSES},
        "AP per distance": {name: summary["label_aps"][name] for name in DETECTION_CLASSES},
    }


def format_table(metrics: dict) -> str:
    """mAP / NDS, then one row per class: AP and the five TP errors (nan where the devkit ignores one)."""
    lines = [f"mAP {metrics['mAP']:.4f}   NDS {metrics['NDS']:.4f}",
             "mean TP errors: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics["TP"].items()),
             f"{'class':<22s}{'AP':>7s}" + "".join(f"{k:>12s}" for k in TP_METRICS)]
    for name in DETECTION_CLASSES:
        errors = metrics["TP per class"][name]
        lines.append(f"{name:<22s}{metrics['AP'][name]:7.3f}" + "".join(f"{errors[k]:12.3f}" for k in TP_METRICS))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.results is not None and args.checkpoint is not None:
        parser.error("argument --checkpoint: not used with --results, which scores existing predictions")
    root = dataset_root(args)
    try:
        split = check_split(root, args.version, args.split)
    except ValueError as error:
        parser.error(f"argument --split: {error}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.results is not None:
        raise SystemExit("--results needs no torchrun: run it in one process")

    inputs = InputFiles()
    outputs = [args.output / "metrics.json", *(args.output / name for name in DEVKIT_FILES)]
    if args.results is None:
        dataset = open_dataset(args, parser, split)
        inputs.add_all("a dataset file", dataset.input_files(range(len(dataset))))
        inputs.add("the checkpoint", args.checkpoint)
        results_path = args.output / "results_nusc.json"
        outputs.append(results_path)
    else:
        inputs.add_all("a dataset table", sorted((root / args.version).glob("*.json")))
        inputs.add("the results file", args.results)
        results_path = args.results
    refuse_overwrite(parser, "-o/--output", outputs, inputs)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if args.results is None:
        records = predict(args, dataset, rank, world, parser)
        if rank == 0:
            with atomic_open(results_path) as handle:
                json.dump({"meta": RESULTS_META, "results": records}, handle)
            print(f"results: {results_path} ({len(records)} samples)")
    if distributed:
        dist.destroy_process_group()
    if rank != 0:
        return 0

    with staged_files(args.output) as devkit_output:
        metrics = evaluate(root, args.version, split, results_path, devkit_output)
    metrics = {"split": split, "root": str(root), "results": str(results_path), "processes": world,
               "checkpoint": str(args.checkpoint) if args.checkpoint else None, **metrics}
    print(format_table(metrics))
    with atomic_open(args.output / "metrics.json") as handle:
        json.dump(metrics, handle, indent=1)
    print(f"metrics: {args.output / 'metrics.json'}")
    if args.results is None and args.checkpoint is None:
        print("WARNING: random weights (no --checkpoint): these scores are meaningless", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
