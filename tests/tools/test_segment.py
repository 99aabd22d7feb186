import os
import subprocess

import numpy as np
import pytest
import torch

from torchsparse import models
from torchsparse.datasets import OFFICIAL
from torchsparse.datasets.point_clouds import read_points
from torchsparse.datasets.semantic_kitti import read_labels
from torchsparse.tools import segment


def test_default_run_on_the_bundled_scan(tmp_path, capsys):
    assert segment.main(["-o", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM weights" in out and "WARNING" in err
    for stage in ("read + voxelize", "kernel maps", "network", "devoxelize", "total"):
        assert stage in out
    assert "123,389 points -> 94,625 voxels" in out and "mIoU" in out
    predictions, _ = read_labels(tmp_path / "000000.label", num_points=123_389)
    # Raw SemanticKITTI ids (the inverse learning map), never class indices.
    assert set(np.unique(predictions)) <= set(OFFICIAL.class_to_raw[1:].tolist())
    assert (tmp_path / "000000.png").stat().st_size > 10_000


def test_checkpoint_gives_those_weights_predictions(tmp_path, capsys):
    torch.manual_seed(3)
    model = models.MinkUNet(cr=0.5)
    torch.nn.init.constant_(model.classifier[0].bias, 0.0)
    model.classifier[0].bias.data[8] = 100.0  # class 8 in SPVNAS order is road, raw id 40
    torch.save({"model": model.state_dict()}, tmp_path / "init")
    segment.main(["--checkpoint", str(tmp_path / "init"), "-o", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "WARNING" not in err and "weights from" in out
    predictions, _ = read_labels(tmp_path / "000000.label")
    assert set(np.unique(predictions)) == {40}
    road = [line for line in out.splitlines() if line.startswith("road")]
    assert float(road[0].split()[-1]) > 10  # a known class reaches a real IoU against the real labels


def test_fused_and_unfused_predictions_agree(tmp_path, capsys):
    torch.manual_seed(5)
    model = models.MinkUNet(cr=0.5)
    g = torch.Generator().manual_seed(6)
    for m in model.modules():  # BatchNorm statistics that folding must carry over
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    torch.save({"model": model.state_dict()}, tmp_path / "init")
    predictions = {}
    for flag in ([], ["--no-fuse"]):
        out = tmp_path / ("unfused" if flag else "fused")
        assert segment.main(["--checkpoint", str(tmp_path / "init"), "-o", str(out), *flag]) == 0
        predictions[bool(flag)], _ = read_labels(out / "000000.label")
    capsys.readouterr()
    assert (predictions[True] == predictions[False]).mean() >= 0.999


def test_console_script(tmp_path):
    result = subprocess.run(["torchsparse-segment", "--help"], capture_output=True, text=True, check=True)
    assert "--checkpoint" in result.stdout


def _scan_with_truth(folder, points=4000):
    """A crop of the bundled scan with its ground truth beside it (SemanticKITTI names), as a user has them."""
    folder.mkdir(parents=True, exist_ok=True)
    read_points(segment.SAMPLE)[:points].tofile(folder / "000000.bin")
    truth = np.fromfile(segment.SAMPLE.with_suffix(".label"), dtype=np.uint32)[:points]
    truth.tofile(folder / "000000.label")
    return folder / "000000.bin", folder / "000000.label"


def _refused(argv, capsys) -> str:
    """Runs segment.main, expects argparse's exit status 2 and returns its message."""
    with pytest.raises(SystemExit) as exit_info:
        segment.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_output_folder_holding_the_ground_truth_is_refused(tmp_path):
    """The reported data loss: `-o d` overwrote d/scan.label with predictions, then scored them: 100 %."""
    scan, truth = _scan_with_truth(tmp_path / "d")
    before = truth.read_bytes()
    done = subprocess.run(
        ["torchsparse-segment", str(scan), "-o", str(tmp_path / "d")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "argument -o/--output" in done.stderr and "would overwrite the ground-truth labels" in done.stderr
    assert done.stderr.count(str(truth)) == 2  # the output and the input it would overwrite
    assert truth.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["000000.bin", "000000.label"]
    assert "accuracy" not in done.stdout


@pytest.mark.parametrize("alias", ["hardlink", "symlink", "labels_option", "checkpoint"])
def test_outputs_onto_any_input_are_refused(tmp_path, capsys, alias):
    scan, truth = _scan_with_truth(tmp_path / "d")
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(scan), "-o", str(out)]
    protected = truth
    if alias == "hardlink":
        os.link(truth, out / "000000.label")
    elif alias == "symlink":
        (out / "000000.label").symlink_to(truth)
    elif alias == "labels_option":
        protected = out / "000000.label"
        protected.write_bytes(truth.read_bytes())
        argv += ["--labels", str(protected)]
    else:  # a checkpoint stored under the name the image would get
        protected = out / "000000.png"
        torch.save({"model": {}}, protected)
        argv += ["--checkpoint", str(protected)]
    before, truth_before = protected.read_bytes(), truth.read_bytes()
    message = _refused(argv, capsys)
    assert "argument -o/--output: refusing to write" in message and str(protected) in message
    assert protected.read_bytes() == before and truth.read_bytes() == truth_before


def test_new_files_beside_the_inputs_are_fine_and_scored_against_the_real_truth(tmp_path, capsys):
    """Scan in velodyne/, truth in ../labels/ (the dataset layout): `-o velodyne` writes the predictions there
    and scores them against labels/, whose bytes stay as they were."""
    scan, truth = _scan_with_truth(tmp_path / "seq" / "velodyne", points=1000)
    (tmp_path / "seq" / "labels").mkdir()
    truth = truth.rename(tmp_path / "seq" / "labels" / "000000.label")
    before = truth.read_bytes()
    assert segment.main([str(scan), "-o", str(scan.parent)]) == 0
    out = capsys.readouterr().out
    assert f"ground truth: {truth}" in out
    accuracy = float(next(line for line in out.splitlines() if line.startswith("accuracy")).split()[-1])
    assert accuracy < 90  # random weights against the real labels, not the predictions against themselves
    assert truth.read_bytes() == before
    assert sorted(p.name for p in scan.parent.iterdir()) == ["000000.bin", "000000.label", "000000.png"]
    predictions, _ = read_labels(scan.parent / "000000.label", num_points=1000)
    assert predictions.tobytes() != before


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "must be a positive integer, got 0"),
        ("--threads", "-2", "must be a positive integer, got -2"),
        ("--threads", "two", "expected an integer, got 'two'"),
        ("--repeat", "0", "must be a positive integer, got 0"),
        ("--voxel-size", "0", "must be a positive number, got 0"),
        ("--voxel-size", "nan", "must be a finite number, got nan"),
        ("--device", "gpu", "is not a torch device"),
        ("--model", "MinkUNet@1GMACs", "unknown model"),
        ("--label-map", "kitti", "invalid choice"),
        ("--checkpoint", "missing.pt", "missing.pt does not exist"),
        ("--labels", ".", ". is not a file"),
    ],
)
def test_bad_option_values_are_argparse_errors(tmp_path, capsys, option, value, message):
    threads = torch.get_num_threads()
    stderr = _refused([str(segment.SAMPLE), "-o", str(tmp_path), option, value], capsys)
    assert f"argument {option}: " in stderr and message in stderr
    assert torch.get_num_threads() == threads  # --threads 0 used to be ignored silently
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    scan, _ = _scan_with_truth(tmp_path / "d")
    stderr = _refused([str(scan), "-o", str(scan)], capsys)
    assert f"argument -o/--output: {scan} exists and is not a folder" in stderr


def test_threads_are_applied(tmp_path, capsys):
    scan, _ = _scan_with_truth(tmp_path / "d", points=500)
    threads = torch.get_num_threads()
    try:
        assert segment.main([str(scan), "-o", str(tmp_path / "out"), "--threads", "1"]) == 0
        assert "with 1 threads" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def test_a_failed_write_keeps_the_previous_predictions(tmp_path, monkeypatch):
    scan, _ = _scan_with_truth(tmp_path / "d", points=500)
    out = tmp_path / "out"
    out.mkdir()
    previous = np.full(500, 40, dtype=np.uint32).tobytes()  # an earlier run's predictions
    (out / "000000.label").write_bytes(previous)

    def dies_halfway(path, semantic, instance=None):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segment, "write_labels", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        segment.main([str(scan), "-o", str(out)])
    assert (out / "000000.label").read_bytes() == previous
    assert [p.name for p in out.iterdir()] == ["000000.label"]
