import pytest
import torch

from torchsparse.models import CheckpointMismatchError
from torchsparse.models.bevfusion import BEVFusion, load_official_checkpoint
from torchsparse.profiling import named_ms, timed
from torchsparse.testing.bevfusion import bevfusion_sample, official_dump

DUMP = official_dump()


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return BEVFusion("det").eval()


def test_detection_state_dict_equals_the_official_checkpoint(detector):
    shapes = [(k, list(v.shape)) for k, v in detector.state_dict().items()]
    assert shapes == list(DUMP["keys"].items())  # 582 keys, shapes and order
    assert sum(p.numel() for p in detector.parameters()) == DUMP["num_params"] == 40_800_087
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in detector.state_dict().items() if k in DUMP["dtypes"]}
    assert dtypes == DUMP["dtypes"]


def test_segmentation_model_builds():
    model = BEVFusion("seg")
    assert "heads.map.classifier.0.weight" in model.state_dict()
    with pytest.raises(ValueError, match="task"):
        BEVFusion("track")


def test_end_to_end_on_one_sample(detector):
    sample = bevfusion_sample()
    with torch.inference_mode(), timed() as times:
        (result,) = detector(**sample)
    timings = named_ms(times)
    boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
    assert boxes.shape[1] == 9 and 0 < len(boxes) <= 200
    assert len(scores) == len(labels) == len(boxes) and bool(torch.isfinite(boxes).all())
    assert bool(((labels >= 0) & (labels < 10)).all())
    assert {"camera.backbone", "camera.vtransform", "lidar.voxelize", "lidar.backbone", "head"} <= set(timings)


def test_official_checkpoint_round_trip(detector, tmp_path):
    state = detector.state_dict()
    torch.save({"meta": {"epoch": 6}, "state_dict": state}, tmp_path / "bevfusion.pth")
    torch.manual_seed(1)
    fresh = BEVFusion("det")
    load_official_checkpoint(fresh, tmp_path / "bevfusion.pth")
    reloaded = fresh.state_dict()
    assert all(torch.equal(reloaded[k], state[k]) for k in state)
    broken = dict(state)
    broken["encoders.lidar.backbone.conv_input.0.weight"] = torch.zeros(3, 3, 3, 4, 16)
    del broken["heads.object.class_encoding.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing.*class_encoding.bias.*mis-shaped.*conv_input"):
        load_official_checkpoint(fresh, broken)


def test_runs_on_a_synthetic_nuscenes_sample(detector, tmp_path):
    from torchsparse.datasets.nuscenes import NuScenes
    from torchsparse.datasets.synthetic_nuscenes import make_synthetic_nuscenes

    sample = NuScenes(make_synthetic_nuscenes(tmp_path), split="mini_val", sweeps=2)[0]
    matrices = ("camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar2image")
    with torch.inference_mode():
        (result,) = detector(sample["images"][None], [sample["points"]], *(sample[k][None] for k in matrices),
                             sample["lidar_aug_matrix"][None])
    assert result["boxes"].shape == (200, 9) and bool(torch.isfinite(result["scores"]).all())
