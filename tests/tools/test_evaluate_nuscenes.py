"""tools/evaluate_nuscenes.py: the devkit's scores of known predictions on the synthetic set, torchrun sharding."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchsparse.datasets.nuscenes import DETECTION_CLASSES, RESULTS_META, NuScenes, detection_results
from torchsparse.tools import evaluate_nuscenes as evaluate
from torchsparse.tools.make_synthetic_nuscenes import make_synthetic_nuscenes

pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (the [nuscenes] extra)")

TOOL = Path(evaluate.__file__)
SPLIT = "mini_val"
# Per the devkit's detection_cvpr_2019 evaluation, these TP errors are undefined (NaN) for these classes.
UNDEFINED = {"orient_err": {"traffic_cone"}, "vel_err": {"barrier", "traffic_cone"},
             "attr_err": {"barrier", "traffic_cone"}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("nusc"), num_scenes=2, samples_per_scene=3, seed=0)


def _write_ground_truth(root, path, perturb=None):
    """The split's ground truth through our results writer, optionally perturbed: perturb(boxes) -> boxes."""
    dataset = NuScenes(root, split=SPLIT)
    results, present = {}, set()
    for i in range(len(dataset)):
        s = dataset[i]
        boxes = s["gt_boxes"].double().numpy()
        if perturb is not None:
            boxes = perturb(boxes.copy())
        present |= {DETECTION_CLASSES[k] for k in s["gt_labels"].tolist()}
        results[s["sample_token"]] = detection_results(
            s["sample_token"], boxes, np.ones(len(boxes)), s["gt_labels"], s["lidar2ego"].double(),
            s["ego2global"].double(),
        )
    path.write_text(json.dumps({"meta": RESULTS_META, "results": results}))
    return present


def _score(root, results, output):
    assert evaluate.main(["--root", str(root), "--results", str(results), "-o", str(output)]) == 0
    return json.loads((output / "metrics.json").read_text())


def test_ground_truth_scores_the_devkit_maximum(root, tmp_path):
    present = _write_ground_truth(root, tmp_path / "gt.json")
    assert present == {"car", "truck", "barrier", "bicycle", "pedestrian", "traffic_cone"}
    metrics = _score(root, tmp_path / "gt.json", tmp_path / "gt")
    # Absent classes score AP 0 and TP error 1; present ones AP 1 and error 0 (float32 poses: ~1e-5 m).
    assert metrics["mAP"] == pytest.approx(len(present) / len(DETECTION_CLASSES), abs=1e-9)
    for name in DETECTION_CLASSES:
        assert metrics["AP"][name] == pytest.approx(float(name in present), abs=1e-9)
    tp_scores = 0.0
    for metric in evaluate.TP_METRICS:
        defined = [c for c in DETECTION_CLASSES if c not in UNDEFINED.get(metric, ())]
        expected = sum(c not in present for c in defined) / len(defined)
        assert metrics["TP"][metric] == pytest.approx(expected, abs=1e-4), metric
        tp_scores += 1 - min(1.0, expected)
    assert metrics["NDS"] == pytest.approx((5 * len(present) / 10 + tp_scores) / 10, abs=1e-4)
    assert (tmp_path / "gt" / "metrics_summary.json").is_file()  # the devkit's own files beside ours


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


def test_bad_input_is_refused(root, tmp_path):
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
    with pytest.raises(SystemExit, match="predefined splits"):
        evaluate.main(["--root", str(root), "--split", "my_split", "--results", str(missing)])


def _run_model(root, output, processes):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29531"]
    command = [*launcher, str(TOOL), "--root", str(root), "-o", str(output), "--threads", "1", "--sweeps", "1"]
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
