import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torchsparse.models as models
from torchsparse.datasets import OFFICIAL
from torchsparse.datasets.semantic_kitti import write_labels
from torchsparse.tools import evaluate_semantic_kitti as evaluate

TOOL = Path(evaluate.__file__)
LEARNED_RAW = OFFICIAL.class_to_raw[1:]
MODEL = "SemanticKITTI_val_MinkUNet@29GMACs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """sequences/08 with 5 small synthetic scans and labels (raw ids incl. unlabeled 0 and moving classes)."""
    root = tmp_path_factory.mktemp("kitti")
    rng = np.random.default_rng(0)
    folder = root / "sequences" / "08"
    (folder / "velodyne").mkdir(parents=True)
    for i in range(5):
        points = np.concatenate([rng.uniform(-8, 8, (1500, 3)), rng.uniform(0, 1, (1500, 1))], 1)
        points.astype(np.float32).tofile(folder / "velodyne" / f"{i:06d}.bin")
        raw = rng.choice(np.concatenate([LEARNED_RAW[:6], [0, 252]]), 1500)
        write_labels(folder / "labels" / f"{i:06d}.label", raw, instance=rng.integers(0, 5, 1500))
    checkpoint = root / "init"
    torch.manual_seed(0)
    torch.save({"model": models.MinkUNet(cr=0.5).state_dict()}, checkpoint)
    return root, checkpoint


def _run(args, tmp_path, name, processes=1):
    output = tmp_path / f"{name}.json"
    if processes == 1:
        command = [sys.executable, str(TOOL)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            "29517",
            str(TOOL),
        ]
    subprocess.run([*command, *args, "-o", str(output), "--threads", "1"], check=True, capture_output=True)
    return json.loads(output.read_text())


def test_model_predictions_and_two_processes_agree(dataset, tmp_path):
    root, checkpoint = dataset
    model_args = [
        "--root",
        str(root),
        "--model",
        "SemanticKITTI_val_MinkUNet@29GMACs",
        "--checkpoint",
        str(checkpoint),
    ]
    single = _run([*model_args, "--save-predictions", str(tmp_path / "pred")], tmp_path, "single")
    assert single["num_scans"] == 5 and single["processes"] == 1
    # Scoring the saved predictions reproduces the numbers of the run that wrote them.
    scored = _run(["--root", str(root), "--predictions", str(tmp_path / "pred")], tmp_path, "scored")
    assert scored["confusion_official"] == single["confusion_official"]
    assert scored["official"] == single["official"] and scored["spvnas"] == single["spvnas"]
    # Two processes under torchrun (gloo): each scores every other scan, the matrices are all-reduced.
    double = _run(model_args, tmp_path, "double", processes=2)
    assert double["processes"] == 2
    assert double["confusion_official"] == single["confusion_official"]
    assert double["official"] == single["official"] and double["spvnas"] == single["spvnas"]


def test_perfect_predictions(dataset, tmp_path):
    root, _ = dataset
    for label in (root / "sequences" / "08" / "labels").iterdir():
        target = tmp_path / "pred" / "sequences" / "08" / "predictions" / label.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(label.read_bytes())
    result = _run(["--root", str(root), "--predictions", str(tmp_path / "pred")], tmp_path, "perfect")
    iou = result["official"]["iou"]
    present = {OFFICIAL.class_names[c] for c in OFFICIAL.to_classes(LEARNED_RAW[:6])}
    # Official semantics: classes present score 1, absent classes count 0 in the mean.
    assert all(iou[name] == (1.0 if name in present else 0.0) for name in iou)
    assert result["official"]["miou"] == pytest.approx(6 / 19)
    # SPVNAS semantics: absent classes count 1.
    assert result["spvnas"]["miou"] == pytest.approx(1.0)
    assert result["official"]["accuracy"] == pytest.approx(1.0)


def _refused(argv, capsys) -> str:
    """Runs the tool in this process, expects argparse's exit status 2 and returns its message."""
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _copy_labels_as_predictions(root, folder):
    for label in (root / "sequences" / "08" / "labels").iterdir():
        target = folder / "sequences" / "08" / "predictions" / label.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(label.read_bytes())


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_onto_inputs_are_refused(dataset, tmp_path, capsys):
    root, checkpoint = dataset
    _copy_labels_as_predictions(root, tmp_path / "pred")
    labels = root / "sequences" / "08" / "labels"
    before = {**_snapshot(root), **_snapshot(tmp_path)}
    scoring = ["--root", str(root), "--predictions", str(tmp_path / "pred")]
    prediction = tmp_path / "pred" / "sequences" / "08" / "predictions" / "000003.label"
    (tmp_path / "scan_alias.json").symlink_to(root / "sequences" / "08" / "velodyne" / "000004.bin")
    for argv, what, path in [
        ([*scoring, "-o", str(labels / "000001.label")], "a ground-truth label file", labels / "000001.label"),
        ([*scoring, "-o", str(prediction)], "a prediction file", prediction),
        ([*scoring, "-o", str(tmp_path / "scan_alias.json")], "a scan", tmp_path / "scan_alias.json"),
        (["--root", str(root), "--model", MODEL, "--checkpoint", str(checkpoint), "-o", str(checkpoint)],
         "the checkpoint", checkpoint),
    ]:
        message = _refused(argv, capsys)
        assert f"argument -o/--output: refusing to write {path}: it would overwrite {what} " in message
    # Predictions saved into a folder whose predictions/ is the dataset's labels/, through a symbolic link.
    (tmp_path / "alias" / "sequences" / "08").mkdir(parents=True)
    (tmp_path / "alias" / "sequences" / "08" / "predictions").symlink_to(labels, target_is_directory=True)
    argv = ["--root", str(root), "--model", MODEL, "--save-predictions", str(tmp_path / "alias")]
    message = _refused(argv, capsys)
    assert "argument --save-predictions: refusing to write " in message and "a ground-truth label file" in message
    assert {**_snapshot(root), **_snapshot(tmp_path / "pred")} == before


def test_scoring_into_the_dataset_folder_writes_only_the_new_file(dataset, tmp_path):
    root, _ = dataset
    _copy_labels_as_predictions(root, tmp_path / "pred")
    before = _snapshot(root)
    output = root / "sequences" / "08" / "results.json"
    try:
        assert evaluate.main(["--root", str(root), "--predictions", str(tmp_path / "pred"), "-o", str(output)]) == 0
        assert json.loads(output.read_text())["official"]["accuracy"] == pytest.approx(1.0)
        assert {p: d for p, d in _snapshot(root).items() if p != output} == before
    finally:
        output.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "argument --threads: must be a positive integer, got 0"),
        (["--sequences", "99"], "argument --root/--sequences: sequence 99"),
        (["--checkpoint", "{checkpoint}"], "--checkpoint and --save-predictions need --model"),
        (["--label-map", "x"], "argument --label-map: invalid choice"),
    ],
)
def test_bad_options_are_argparse_errors(dataset, tmp_path, capsys, argv, message):
    root, checkpoint = dataset
    _copy_labels_as_predictions(root, tmp_path / "pred")
    argv = [a.format(checkpoint=checkpoint) for a in argv]
    stderr = _refused(["--root", str(root), "--predictions", str(tmp_path / "pred"), *argv], capsys)
    assert message in stderr


def test_missing_predictions_are_refused_before_scoring(dataset, tmp_path, capsys):
    root, _ = dataset
    _copy_labels_as_predictions(root, tmp_path / "pred")
    (tmp_path / "pred" / "sequences" / "08" / "predictions" / "000002.label").unlink()
    stderr = _refused(["--root", str(root), "--predictions", str(tmp_path / "pred")], capsys)
    assert "argument --predictions: 1 of 5 scans have no prediction" in stderr and "000002.label" in stderr


def _write_predictions(root, folder, change):
    """Writes change(rng, ground-truth raw ids) for every scan; returns the (truth, prediction) raw ids."""
    rng = np.random.default_rng(11)
    truths, predictions = [], []
    for label in sorted((root / "sequences" / "08" / "labels").iterdir()):
        truth = np.fromfile(label, dtype=np.uint32) & 0xFFFF
        predicted = change(rng, truth.copy())
        write_labels(folder / "sequences" / "08" / "predictions" / label.name, predicted)
        truths.append(truth)
        predictions.append(predicted)
    return np.concatenate(truths), np.concatenate(predictions)


def _unlabeled_10_percent(rng, raw):
    raw[rng.random(raw.size) < 0.1] = 0
    return raw


def _random_raw_ids_30_percent(rng, raw):
    # Raw ids of every kind: learned, moving, unlabeled/outlier (-> class 0) and ids outside the label map.
    pool = np.array([0, 1, 10, 11, 40, 44, 48, 50, 52, 60, 70, 72, 99, 252, 256, 259, 3, 1000])
    change = rng.random(raw.size) < 0.3
    raw[change] = rng.choice(pool, int(change.sum()))
    return raw


@pytest.mark.parametrize("change", [_unlabeled_10_percent, _random_raw_ids_30_percent])
def test_official_accuracy_is_the_apis_getacc(dataset, tmp_path, capsys, change):
    """semantic-kitti-api's accuracy: right / labelled points whose prediction is not 0 (class 0 after the
    learning map). Expected numbers are counted point by point from that definition."""
    root, _ = dataset
    truth, predicted = _write_predictions(root, tmp_path / "pred", change)
    output = tmp_path / "results.json"
    argv = ["--root", str(root), "--predictions", str(tmp_path / "pred"), "-o", str(output)]
    assert evaluate.main(argv) == 0
    official = json.loads(output.read_text())["official"]
    gt, pred = OFFICIAL.to_classes(truth), OFFICIAL.to_classes(predicted)
    labelled, scored = gt != 0, (gt != 0) & (pred != 0)
    assert scored.sum() < labelled.sum()  # some labelled points are predicted 0: the two figures differ
    assert official["accuracy"] == pytest.approx(np.mean(pred[scored] == gt[scored]), rel=1e-12)
    all_labelled = np.mean(pred[labelled] == gt[labelled])
    assert official["accuracy_all_labelled"] == pytest.approx(all_labelled, rel=1e-12)
    iou = [
        np.sum((gt == c) & (pred == c)) / np.sum(((gt == c) | (pred == c)) & labelled)
        if np.any(((gt == c) | (pred == c)) & labelled)
        else 0.0
        for c in range(1, OFFICIAL.num_classes)
    ]
    assert list(official["iou"].values()) == pytest.approx(iou, rel=1e-12)
    assert official["miou"] == pytest.approx(np.mean(iou), rel=1e-12)
    if change is _unlabeled_10_percent:
        assert official["accuracy"] == 1.0 and official["accuracy_all_labelled"] < 0.95
    stdout = capsys.readouterr().out
    assert f"accuracy over all labelled points  {100 * official['accuracy_all_labelled']:5.1f}" in stdout
