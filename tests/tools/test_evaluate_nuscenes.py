"""tools/evaluate_nuscenes.py: the devkit's scores of known predictions on the synthetic set, torchrun sharding."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchsparse.datasets.nuscenes import (
    DETECTION_CLASSES,
    RESULTS_META,
    NuScenes,
    box_attribute,
    detection_results,
)
from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes
from torchsparse.tools import evaluate_nuscenes as evaluate

pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (the [nuscenes] extra)")

TOOL = Path(evaluate.__file__)
SPLIT = "mini_val"
# Per the devkit's detection_cvpr_2019 evaluation, these TP errors are undefined (NaN) for these classes.
UNDEFINED = {"orient_err": {"traffic_cone"}, "vel_err": {"barrier", "traffic_cone"},
             "attr_err": {"barrier", "traffic_cone"}}


# A second database under names the devkit does not know: version, scenes and splits of its own.
CUSTOM = {"version": "v1.0-synth", "scene_names": ["synth-000", "synth-001", "synth-002", "synth-003"],
          "split_names": ("synth_train", "synth_val")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("nusc"), num_scenes=2, samples_per_scene=3, seed=0)


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory):
    # Seed 0 with these counts leaves the truck of synth-002 standing (annotated vehicle.stopped).
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("custom"), num_scenes=4, samples_per_scene=2,
                                   sweeps_per_sample=0, **CUSTOM)


def _write_ground_truth(root, path, perturb=None, version="v1.0-mini", split=SPLIT, own_attributes=True,
                        distinct_scores=False):
    """The split's ground truth through our results writer, optionally perturbed: perturb(boxes) -> boxes.
    With own_attributes the annotations' attributes are written, else BEVFusion's velocity rule decides.
    Scores are 1, or with distinct_scores decreasing in split order: the devkit interpolates TP errors over the
    scores, so with equal scores only the first box matched in a class counts.

    Returns:
        The set of detection classes present, and the (class, annotated, rule) attributes of every box.
    """
    dataset = NuScenes(root, version=version, split=split, cameras=False)
    results, present, attributes, count = {}, set(), [], 0
    for i in range(len(dataset)):
        s = dataset[i]
        boxes = s["gt_boxes"].double().numpy()
        if perturb is not None:
            boxes = perturb(boxes.copy())
        present |= {DETECTION_CLASSES[k] for k in s["gt_labels"].tolist()}
        scores = 1 - 1e-3 * np.arange(count, count + len(boxes)) if distinct_scores else np.ones(len(boxes))
        count += len(boxes)
        records = detection_results(
            s["sample_token"], boxes, scores, s["gt_labels"], s["lidar2ego"].double(),
            s["ego2global"].double(), attributes=s["gt_attributes"] if own_attributes else None,
        )
        results[s["sample_token"]] = records
        rule = {tuple(r["translation"]): box_attribute(r["detection_name"], r["velocity"]) for r in records}
        attributes += [(r["detection_name"], r["attribute_name"], rule[tuple(r["translation"])]) for r in records]
    path.write_text(json.dumps({"meta": RESULTS_META, "results": results}))
    return present, attributes


def _score(root, results, output, *options):
    assert evaluate.main(["--root", str(root), "--results", str(results), "-o", str(output), *options]) == 0
    return json.loads((output / "metrics.json").read_text())


def _assert_devkit_maximum(metrics, present):
    """Absent classes score AP 0 and TP error 1; present ones AP 1 and error 0 (float32 poses: ~1e-5 m)."""
    assert metrics["mAP"] == pytest.approx(len(present) / len(DETECTION_CLASSES), abs=1e-9)
    for name in DETECTION_CLASSES:
        assert metrics["AP"][name] == pytest.approx(float(name in present), abs=1e-9)
    tp_scores = 0.0
    for metric in evaluate.TP_METRICS:
        defined = [c for c in DETECTION_CLASSES if c not in UNDEFINED.get(metric, ())]
        expected = sum(c not in present for c in defined) / len(defined)
        assert metrics["TP"][metric] == pytest.approx(expected, abs=1e-4), metric
        for name in set(defined) & present:
            assert metrics["TP per class"][name][metric] == pytest.approx(0.0, abs=1e-4), (name, metric)
        tp_scores += 1 - min(1.0, expected)
    assert metrics["NDS"] == pytest.approx((5 * len(present) / 10 + tp_scores) / 10, abs=1e-4)


def test_ground_truth_scores_the_devkit_maximum(root, tmp_path):
    present, _ = _write_ground_truth(root, tmp_path / "gt.json")
    assert present == {"car", "truck", "barrier", "bicycle", "pedestrian", "traffic_cone"}
    _assert_devkit_maximum(_score(root, tmp_path / "gt.json", tmp_path / "gt"), present)
    assert (tmp_path / "gt" / "metrics_summary.json").is_file()  # the devkit's own files beside ours


def test_custom_database_and_split_score_the_devkit_maximum(custom_root, tmp_path, capsys):
    """v1.0-synth / synth_val: the devkit's DetectionEval reads the split from splits.json. Ground truth written
    back with its own attributes reaches the maximum; BEVFusion's velocity rule calls the stopped truck of
    synth-002 parked, so the same boxes lose on attr_err."""
    options = ["--version", "v1.0-synth", "--split", "synth_val"]
    present, attributes = _write_ground_truth(custom_root, tmp_path / "gt.json", version="v1.0-synth",
                                              split="synth_val", distinct_scores=True)
    assert ("truck", "vehicle.stopped", "vehicle.parked") in attributes
    metrics = _score(custom_root, tmp_path / "gt.json", tmp_path / "gt", *options)
    assert metrics["split"] == "synth_val"
    _assert_devkit_maximum(metrics, present)
    _write_ground_truth(custom_root, tmp_path / "rule.json", version="v1.0-synth", split="synth_val",
                        own_attributes=False, distinct_scores=True)
    rule = _score(custom_root, tmp_path / "rule.json", tmp_path / "rule", *options)
    assert rule["TP per class"]["truck"]["attr_err"] > 0.1 and rule["NDS"] < metrics["NDS"]
    # No --split: a custom version has no default; the error lists its splits (before any work).
    message = _refused(["--root", str(custom_root), "--version", "v1.0-synth", "--results", str(tmp_path / "gt.json"),
                        "-o", str(tmp_path / "none")], capsys)
    assert "argument --split: 'v1.0-synth' is not an official nuScenes version" in message
    assert "['synth_train', 'synth_val']" in message
    # A predefined split on a version the devkit refuses it for (its load_gt asserts): named, not a traceback.
    message = _refused(["--root", str(custom_root), "--version", "v1.0-synth", "--split", "mini_val",
                        "--results", str(tmp_path / "gt.json"), "-o", str(tmp_path / "none")], capsys)
    assert "predefined split 'mini_val' only on a version ending in 'mini', not 'v1.0-synth'" in message
    assert not (tmp_path / "none").exists()


def test_a_database_with_part_of_a_predefined_split(root, tmp_path):
    """mini_val has two scenes; the database holds scene-0103 only and no splits.json. The devkit evaluates
    the scenes present; so does the loader, and the written-back ground truth scores the maximum."""
    partial = tmp_path / "partial"
    shutil.copytree(root / "v1.0-mini", partial / "v1.0-mini")
    for folder in ("samples", "sweeps", "maps"):
        (partial / folder).symlink_to(root / folder, target_is_directory=True)
    (partial / "v1.0-mini" / "splits.json").unlink()
    dataset = NuScenes(partial, split=SPLIT)
    assert [dataset.get("scene", dataset.get("sample", t)["scene_token"])["name"] for t in dataset.sample_tokens] == [
        "scene-0103"] * 3
    present, _ = _write_ground_truth(partial, tmp_path / "gt.json", distinct_scores=True)
    _assert_devkit_maximum(_score(partial, tmp_path / "gt.json", tmp_path / "gt"), present)


def test_a_lidar_only_database_is_scored_and_refused_for_the_model(tmp_path, capsys):
    lidar_only = make_synthetic_nuscenes(tmp_path / "lidar", num_scenes=2, samples_per_scene=2,
                                         sweeps_per_sample=0, cameras=False)
    present, _ = _write_ground_truth(lidar_only, tmp_path / "gt.json", distinct_scores=True)
    _assert_devkit_maximum(_score(lidar_only, tmp_path / "gt.json", tmp_path / "gt"), present)
    message = _refused(["--root", str(lidar_only), "-o", str(tmp_path / "run")], capsys)
    assert "has no camera sensors (a LiDAR-only database), and BEVFusion needs the six cameras" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("perturb", "worse"),
    [
        (lambda b: b + np.array([0.8, 0, 0, 0, 0, 0, 0, 0, 0]), "mAP"),  # 0.8 m off: misses the 0.5 m threshold
        (lambda b: b + np.array([0, 0, 0, 0, 0, 0, 0.4, 0, 0]), "orient_err"),  # yaw off by 0.4 rad
        (lambda b: b * np.array([1, 1, 1, 1.3, 1.3, 1.3, 1, 1, 1]), "scale_err"),
        (lambda b: b + np.array([0, 0, 0, 0, 0, 0, 0, 2.0, 0]), "vel_err"),
        (lambda b: b + np.array([0, 0, 0, 0, 0, 0, math.pi / 2, 0, 0]), "orient_err"),  # a mixed-up yaw convention
    ],
)
def test_perturbed_boxes_score_lower(root, tmp_path, perturb, worse):
    _write_ground_truth(root, tmp_path / "gt.json")
    best = _score(root, tmp_path / "gt.json", tmp_path / "gt")
    _write_ground_truth(root, tmp_path / "bad.json", perturb)
    bad = _score(root, tmp_path / "bad.json", tmp_path / "bad")
    assert bad["NDS"] < best["NDS"] - 0.01
    if worse == "mAP":
        assert bad["mAP"] < best["mAP"]
    else:
        assert bad["TP"][worse] > best["TP"][worse] + 0.01


def test_bad_input_is_refused(root, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(SystemExit, match="corrupt.json"):
        _score(root, corrupt, tmp_path / "out")
    missing = tmp_path / "missing.json"
    _write_ground_truth(root, missing)
    data = json.loads(missing.read_text())
    data["results"].popitem()  # every sample of the split must be present
    missing.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="rejected"):
        _score(root, missing, tmp_path / "out")
    # A split that is neither the devkit's nor in splits.json: an argparse error naming both, before any work.
    message = _refused(["--root", str(root), "--split", "my_split", "--results", str(missing)], capsys)
    assert "argument --split: split 'my_split' is neither a predefined nuscenes-devkit split" in message
    assert "v1.0-mini/splits.json (['mini_train', 'mini_val'])" in message


def _run_model(root, output, processes, *options):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29531"]
    command = [*launcher, str(TOOL), "--root", str(root), "-o", str(output), "--threads", "1", "--sweeps", "1",
               *options]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in done.stderr
    return json.loads((output / "metrics.json").read_text()), json.loads((output / "results_nusc.json").read_text())


@pytest.mark.slow
def test_model_run_and_two_processes_agree(root, tmp_path):
    single, single_results = _run_model(root, tmp_path / "one", 1)
    tokens = NuScenes(root, split=SPLIT).sample_tokens
    assert list(single_results["results"]) == tokens and single["processes"] == 1
    assert all(0 < len(r) <= 500 for r in single_results["results"].values())
    double, double_results = _run_model(root, tmp_path / "two", 2)
    assert double["processes"] == 2
    assert double_results == single_results
    for key in ("mAP", "NDS", "AP", "TP", "TP per class"):
        assert json.dumps(double[key]) == json.dumps(single[key]), key  # NaN-safe exact comparison
    rescored = _score(root, tmp_path / "one" / "results_nusc.json", tmp_path / "again")
    assert json.dumps(rescored["TP per class"]) == json.dumps(single["TP per class"])
    assert rescored["NDS"] == single["NDS"]


@pytest.mark.slow
def test_model_run_on_a_custom_database(tmp_path):
    """Loader, model and devkit on v1.0-synth / synth_val (one sample): results for every sample of the split."""
    small = make_synthetic_nuscenes(tmp_path / "custom", num_scenes=2, samples_per_scene=1, sweeps_per_sample=1,
                                    **{**CUSTOM, "scene_names": CUSTOM["scene_names"][:2]})
    options = ("--version", "v1.0-synth", "--split", "synth_val")
    metrics, results = _run_model(small, tmp_path / "run", 1, *options)
    tokens = NuScenes(small, version="v1.0-synth", split="synth_val").sample_tokens
    assert list(results["results"]) == tokens and len(tokens) == 1
    assert metrics["split"] == "synth_val" and 0 <= metrics["NDS"] <= 1


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_outputs_onto_inputs_are_refused(root, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    results = out / "metrics.json"  # scoring a results file saved under the name of our metrics
    _write_ground_truth(root, results)
    before = results.read_bytes()
    message = _refused(["--root", str(root), "--results", str(results), "-o", str(out)], capsys)
    expected = f"argument -o/--output: refusing to write {results}: it would overwrite the results file {results}"
    assert expected in message
    assert results.read_bytes() == before and os.listdir(out) == ["metrics.json"]
    # The devkit's own output files count too, and dataset tables are inputs.
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "metrics_details.json").symlink_to(root / "v1.0-mini" / "sample.json")
    message = _refused(["--root", str(root), "--results", str(results), "-o", str(tmp_path / "tables")], capsys)
    assert "metrics_details.json: it would overwrite a dataset table" in message
    # Model runs read the split's sample files: results_nusc.json may not be one of them.
    (tmp_path / "run").mkdir()
    dataset = NuScenes(root, split=SPLIT)
    lidar = next(root / sd["filename"] for sd in dataset.tables["sample_data"]
                 if sd["sample_token"] == dataset.sample_tokens[-1] and sd["filename"].endswith(".pcd.bin"))
    os.link(lidar, tmp_path / "run" / "results_nusc.json")
    message = _refused(["--root", str(root), "-o", str(tmp_path / "run")], capsys)
    assert "results_nusc.json: it would overwrite a dataset file" in message


def test_bad_options_are_argparse_errors(root, tmp_path, capsys):
    _write_ground_truth(root, tmp_path / "gt.json")
    scoring = ["--root", str(root), "--results", str(tmp_path / "gt.json"), "-o", str(tmp_path / "out")]
    assert "argument --threads: must be a positive integer, got 0" in _refused([*scoring, "--threads", "0"], capsys)
    message = _refused([*scoring, "--checkpoint", str(tmp_path / "gt.json")], capsys)
    assert "argument --checkpoint: not used with --results" in message
    message = _refused(["--root", str(root), "--results", str(tmp_path / "none.json")], capsys)
    assert f"argument --results: {tmp_path / 'none.json'} does not exist" in message
    assert not (tmp_path / "out").exists()


def test_a_failed_evaluation_keeps_the_previous_metrics(root, tmp_path, monkeypatch):
    _write_ground_truth(root, tmp_path / "gt.json")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("metrics.json", "metrics_summary.json"):
        (out / name).write_text("previous")

    def dies_after_the_devkit_wrote(root, version, split, results_path, output):
        (output / "metrics_summary.json").write_text("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", dies_after_the_devkit_wrote)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(["--root", str(root), "--results", str(tmp_path / "gt.json"), "-o", str(out)])
    assert sorted(os.listdir(out)) == ["metrics.json", "metrics_summary.json"]
    assert all((out / name).read_text() == "previous" for name in os.listdir(out))
