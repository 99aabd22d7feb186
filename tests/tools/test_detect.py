"""tools/detect.py (torchsparse-detect): one sample end to end, results file, bird's-eye PNG, latency."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from torchsparse.datasets.nuscenes import DETECTION_CLASSES, NuScenes
from torchsparse.tools import detect


def test_fusion_flag():
    parser = detect.build_parser()
    assert parser.parse_args([]).no_fuse is False and parser.parse_args(["--no-fuse"]).no_fuse is True


def test_box_corners_bev():
    # nuScenes heading 0 (along +x) is BEVFusion yaw -pi/2: length along x, width along y.
    box = np.array([[1.0, 2.0, 0.0, 0.5, 4.0, 1.0, -math.pi / 2, 0, 0]])
    corners = detect.box_corners_bev(box)[0]
    np.testing.assert_allclose(np.sort(corners[:, 0]), [-1, -1, 3, 3], atol=1e-12)
    np.testing.assert_allclose(np.sort(corners[:, 1]), [1.75, 1.75, 2.25, 2.25], atol=1e-12)
    np.testing.assert_allclose(corners[:2].mean(0), [3.0, 2.0], atol=1e-12)  # the first two: the front edge
    assert detect.box_corners_bev(np.zeros((0, 9))).shape == (0, 4, 2)


@pytest.mark.slow
def test_no_arguments_on_a_fresh_install(tmp_path):
    """A fresh cache: the synthetic set is generated, one sample detected, results + PNG + latency written."""
    env = {**os.environ, "TORCHSPARSE_CACHE": str(tmp_path / "cache")}
    executable = shutil.which("torchsparse-detect")
    command = [executable] if executable else [sys.executable, detect.__file__]
    done = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in done.stderr
    for module in ("camera.backbone", "camera.vtransform", "lidar.backbone", "decoder", "head", "total"):
        assert module in done.stdout
    root = tmp_path / "cache" / "synthetic_nuscenes-seed0"
    token = NuScenes(root, split="mini_val").sample_tokens[0]
    results = json.loads((tmp_path / "detect_output" / "results.json").read_text())
    assert set(results) == {"meta", "results"} and list(results["results"]) == [token]
    records = results["results"][token]
    assert 0 < len(records) <= 500
    for r in records:
        assert r["sample_token"] == token and r["detection_name"] in DETECTION_CLASSES
        assert len(r["translation"]) == 3 and len(r["size"]) == 3 and len(r["rotation"]) == 4
        assert len(r["velocity"]) == 2 and 0 <= r["detection_score"] <= 1
    with Image.open(tmp_path / "detect_output" / "bev.png") as png:
        assert png.size[0] > 500 and png.size[1] > 500


def test_bad_sample_choice_is_refused(tmp_path):
    from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes

    root = make_synthetic_nuscenes(tmp_path / "nusc", num_scenes=1, samples_per_scene=1)
    with pytest.raises(SystemExit, match="out of range"):
        detect.main(["--root", str(root), "--index", "5"])
    with pytest.raises(SystemExit, match="not in split"):
        detect.main(["--root", str(root), "--sample", "nope"])


def _refused(main, argv, capsys) -> str:
    """Runs a tool's main in this process, expects argparse's exit status 2 and returns its message."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes

    return make_synthetic_nuscenes(tmp_path_factory.mktemp("nusc"), num_scenes=1, samples_per_scene=2,
                                   sweeps_per_sample=1)


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_onto_dataset_files_or_the_checkpoint_are_refused(small_root, tmp_path, capsys):
    before = _files(small_root)
    dataset = NuScenes(small_root, split="mini_val", sweeps=1)
    sweep = next(sd for sd in dataset.tables["sample_data"] if not sd["is_key_frame"])
    table = small_root / "v1.0-mini" / "scene.json"
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").symlink_to(table)
    os.link(small_root / sweep["filename"], out / "bev.png")  # a LiDAR sweep merged into the second sample
    message = _refused(detect.main, ["--root", str(small_root), "--index", "1", "-o", str(out)], capsys)
    assert f"refusing to write {out / 'results.json'}: it would overwrite a dataset file {table}" in message
    (out / "results.json").unlink()
    message = _refused(detect.main, ["--root", str(small_root), "--index", "1", "-o", str(out)], capsys)
    assert f"refusing to write {out / 'bev.png'}: it would overwrite a dataset file" in message
    assert sweep["filename"] in message
    checkpoint = tmp_path / "elsewhere" / "results.json"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    argv = ["--root", str(small_root), "--checkpoint", str(checkpoint), "-o", str(checkpoint.parent)]
    assert "it would overwrite the checkpoint" in _refused(detect.main, argv, capsys)
    assert checkpoint.read_bytes() == b"weights" and _files(small_root) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "argument --threads: must be a positive integer, got 0"),
        (["--repeat", "0"], "argument --repeat: must be a positive integer, got 0"),
        (["--sweeps", "-1"], "argument --sweeps: must be an integer >= 0, got -1"),
        (["--seed", str(2**64)], "argument --seed: must be an integer from"),
        (["--score-threshold", "nan"], "argument --score-threshold: must be a finite number, got nan"),
        (["--version", "v9"], "argument --root/--version/--split: no nuScenes version 'v9'"),
        (["--split", "nope"], "argument --root/--version/--split: split 'nope'"),
        (["--checkpoint", "missing.pth"], "argument --checkpoint: missing.pth does not exist"),
    ],
)
def test_bad_options_are_argparse_errors(small_root, tmp_path, capsys, argv, message):
    stderr = _refused(detect.main, ["--root", str(small_root), "-o", str(tmp_path / "out"), *argv], capsys)
    assert message in stderr
    assert not (tmp_path / "out").exists()


def test_a_corrupt_checkpoint_is_an_argparse_error(small_root, tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    argv = ["--root", str(small_root), "--checkpoint", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "out")]
    assert "argument --checkpoint: cannot read" in _refused(detect.main, argv, capsys)
    assert not (tmp_path / "out").exists()


CUSTOM = {"version": "v1.0-synth", "scene_names": ["synth-000", "synth-001"],
          "split_names": ("synth_train", "synth_val")}


def test_custom_and_lidar_only_databases_before_the_model(tmp_path, capsys):
    """A custom version without --split means every scene (it has no default split); a database without
    cameras is refused for BEVFusion, which reads six of them."""
    from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes

    custom = make_synthetic_nuscenes(tmp_path / "custom", num_scenes=2, samples_per_scene=1, sweeps_per_sample=0,
                                     **CUSTOM)
    with pytest.raises(SystemExit, match="not in the database"):
        detect.main(["--root", str(custom), "--version", "v1.0-synth", "--sample", "nope"])
    with pytest.raises(SystemExit, match="not in split synth_val"):
        detect.main(["--root", str(custom), "--version", "v1.0-synth", "--split", "synth_val", "--sample", "nope"])
    lidar_only = make_synthetic_nuscenes(tmp_path / "lidar", num_scenes=1, samples_per_scene=1,
                                         sweeps_per_sample=0, cameras=False)
    message = _refused(detect.main, ["--root", str(lidar_only), "-o", str(tmp_path / "out")], capsys)
    assert "has no camera sensors (a LiDAR-only database), and BEVFusion needs the six cameras" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_detect_on_a_custom_database(tmp_path, capsys):
    from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes

    custom = make_synthetic_nuscenes(tmp_path / "custom", num_scenes=2, samples_per_scene=1, sweeps_per_sample=0,
                                     **CUSTOM)
    dataset = NuScenes(custom, version="v1.0-synth", split="synth_train")
    token = dataset.sample_tokens[0]  # a training scene: reachable because no split means every scene
    argv = ["--root", str(custom), "--version", "v1.0-synth", "--sample", token, "--sweeps", "0",
            "-o", str(tmp_path / "out")]
    assert detect.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["results"]) == [token] and 0 < len(results["results"][token]) <= 500
    assert f"sample {token} ({custom}" in capsys.readouterr().out
