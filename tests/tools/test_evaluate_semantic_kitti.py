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
