import importlib.util
import subprocess

import numpy as np
import pytest
import torch

import torchsparse.models as models
from torchsparse.datasets import OFFICIAL
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


def test_point_cloud_files(tmp_path):
    ply = tmp_path / "cloud.ply"
    xyz = np.random.default_rng(0).uniform(-5, 5, (500, 3)).astype(np.float32)
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 500\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n" + "\n".join(" ".join(map(str, p)) for p in xyz) + "\n"
    )
    if importlib.util.find_spec("open3d") is None:
        with pytest.raises(ValueError, match="needs open3d"):
            segment.read_points(ply)
    else:
        np.testing.assert_allclose(segment.read_points(ply)[:, :3], xyz, rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported point-cloud format"):
        segment.read_points(tmp_path / "cloud.xyz")
    (tmp_path / "bad.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="bad.bin"):
        segment.read_points(tmp_path / "bad.bin")


def test_console_script(tmp_path):
    result = subprocess.run(["torchsparse-segment", "--help"], capture_output=True, text=True, check=True)
    assert "--checkpoint" in result.stdout
