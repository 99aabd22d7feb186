"""datasets/synthetic_nuscenes.py and datasets/nuscenes.py: format, determinism, geometry round trips, errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from torchsparse.datasets.nuscenes import (
    CAMERAS,
    DETECTION_CLASSES,
    MODEL_INPUTS,
    TABLES,
    NuScenes,
    box_attribute,
    category_to_detection_name,
    collate_nuscenes,
    default_split,
    detection_results,
    matrix_quaternion,
    quaternion_matrix,
)
from torchsparse.datasets.synthetic_nuscenes import cached_synthetic_nuscenes, make_synthetic_nuscenes

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("nusc"), num_scenes=2, samples_per_scene=3, seed=0)


def _tables(root):
    return {name: json.loads((root / VERSION / f"{name}.json").read_text()) for name in TABLES}


def test_tables_and_links(root):
    t = _tables(root)
    tokens = {name: {r["token"] for r in rows} for name, rows in t.items()}
    assert len(t["scene"]) == 2 and len(t["sample"]) == 6
    # 7 key frames per sample, and 2 LiDAR sweeps between consecutive key frames of a scene.
    num_sweeps = 2 * 2 * 2
    assert len(t["sample_data"]) == 6 * 7 + num_sweeps and len(t["ego_pose"]) == 6 * 7 + num_sweeps
    sweeps = [sd for sd in t["sample_data"] if not sd["is_key_frame"]]
    assert len(sweeps) == num_sweeps and all(sd["filename"].startswith("sweeps/LIDAR_TOP/") for sd in sweeps)
    by_token = {sd["token"]: sd for sd in t["sample_data"]}
    for sd in t["sample_data"]:
        assert sd["sample_token"] in tokens["sample"] and sd["ego_pose_token"] in tokens["ego_pose"]
        assert sd["calibrated_sensor_token"] in tokens["calibrated_sensor"]
        assert (root / sd["filename"]).is_file()
        for link in ("prev", "next"):
            assert sd[link] == "" or sd[link] in tokens["sample_data"]
        if sd["next"]:  # a chain per sensor, forward in time
            nxt = by_token[sd["next"]]
            assert nxt["prev"] == sd["token"] and nxt["timestamp"] > sd["timestamp"]
            assert nxt["calibrated_sensor_token"] == sd["calibrated_sensor_token"]
    for scene in t["scene"]:
        chain, token = [], scene["first_sample_token"]
        while token:
            chain.append(token)
            token = next(s for s in t["sample"] if s["token"] == token)["next"]
        assert len(chain) == scene["nbr_samples"] and chain[-1] == scene["last_sample_token"]
    for ann in t["sample_annotation"]:
        assert ann["instance_token"] in tokens["instance"] and ann["visibility_token"] in tokens["visibility"]
        assert set(ann["attribute_tokens"]) <= tokens["attribute"] and len(ann["size"]) == 3
        assert len(ann["rotation"]) == 4 and ann["num_lidar_pts"] > 0
    for m in t["map"]:
        assert (root / m["filename"]).is_file() and set(m["log_tokens"]) == tokens["log"]
    names = {c["name"] for c in t["category"]}
    present = {category_to_detection_name(n) for n in names} - {None}
    assert {"car", "pedestrian", "traffic_cone", "bicycle"} <= present
    splits = json.loads((root / VERSION / "splits.json").read_text())
    assert splits == {"mini_train": ["scene-0061"], "mini_val": ["scene-0103"]}
    assert [s["name"] for s in t["scene"]] == ["scene-0061", "scene-0103"]
    lidar = next(sd for sd in t["sample_data"] if sd["fileformat"] == "pcd")
    cloud = np.fromfile(root / lidar["filename"], dtype=np.float32).reshape(-1, 5)
    assert cloud.shape[0] > 1000 and set(np.unique(cloud[:, 4])) <= set(range(32))
    with Image.open(root / next(sd for sd in t["sample_data"] if sd["fileformat"] == "jpg")["filename"]) as img:
        assert img.size == (1600, 900)


def test_generator_is_deterministic(root, tmp_path):
    other = make_synthetic_nuscenes(tmp_path / "again", num_scenes=2, samples_per_scene=3, seed=0)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    checked = 0
    for rel in files:
        if rel.suffix in (".json", ".bin", ".jpg"):
            assert (root / rel).read_bytes() == (other / rel).read_bytes(), rel
            checked += 1
    assert checked > 13 + 6
    different = make_synthetic_nuscenes(tmp_path / "seed1", num_scenes=2, samples_per_scene=3, seed=1)
    assert (different / VERSION / "sample_annotation.json").read_bytes() != (
        root / VERSION / "sample_annotation.json"
    ).read_bytes()


@pytest.mark.parametrize("sweeps", [0, 2])
def test_loader_reads_every_sample(root, sweeps):
    everything = NuScenes(root, split=None, sweeps=sweeps)
    val = NuScenes(root, split="mini_val")
    train = NuScenes(root, scenes=["scene-0061"])
    assert len(everything) == 6 and len(val) == 3 and len(train) == 3
    assert set(val.sample_tokens).isdisjoint(train.sample_tokens)
    for i in range(len(everything)):
        s = everything[i]
        assert s["points"].dtype == torch.float32 and s["points"].shape[1] == 5
        assert s["images"].shape == (6, 3, 256, 704) and s["images"].dtype == torch.float32
        for key in ("camera2lidar", "camera_intrinsics", "lidar2image", "img_aug_matrix"):
            assert s[key].shape == (6, 4, 4) and s[key].dtype == torch.float32
        for key in ("lidar_aug_matrix", "lidar2ego", "ego2global"):
            assert s[key].shape == (4, 4)
        assert torch.equal(s["lidar_aug_matrix"], torch.eye(4))
        assert s["gt_boxes"].dtype == torch.float32 and s["gt_boxes"].shape == (7, 9)  # the animal is dropped
        assert s["gt_labels"].dtype == torch.int64 and s["gt_labels"].shape == (7,)
        assert isinstance(s["sample_token"], str)
        # Previous LiDAR frames, 1/6 s apart: each sweep adds its points except the 40 roof returns with |x|,
        # |y| < 1 m of its sensor (some lie beyond 1 m from it: a square, not a disc); the key frame keeps its own.
        lags = s["points"][:, 4]
        num_prev = min(sweeps, 3 * (i % 3))
        assert len(torch.unique(lags)) == 1 + num_prev
        assert torch.allclose(lags.max(), torch.tensor(num_prev * 0.5 / 3), atol=1e-5)
        chain = [everything.get("sample_data", everything._data[s["sample_token"]]["LIDAR_TOP"])]
        for _ in range(num_prev):
            chain.append(everything.get("sample_data", chain[-1]["prev"]))
        raw = [np.fromfile(root / sd["filename"], dtype=np.float32).size // 5 for sd in chain]
        assert len(lags) == raw[0] + sum(n - 40 for n in raw[1:])
        assert ((s["points"][:, :2].abs() < 1.0).all(1) & (lags == 0)).sum() == 40
    labels = {DETECTION_CLASSES[i] for i in everything[0]["gt_labels"].tolist()}
    assert {"car", "pedestrian", "traffic_cone", "bicycle"} <= labels
    m = everything[0]["img_aug_matrix"][0]
    assert torch.allclose(m.diagonal()[:2], torch.tensor([0.48, 0.48])) and m[0, 3] == -32 and m[1, 3] == -176


def _lidar_box_corners(box):
    x, y, zb, w, l, h, yaw = box[:7].tolist()
    heading = -yaw - math.pi / 2  # nuScenes' yaw in the LiDAR frame
    c, s = math.cos(heading), math.sin(heading)
    lx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    ly = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    lz = np.array([0, 0, 0, 0, 1, 1, 1, 1]) * h
    return np.stack([x + c * lx - s * ly, y + s * lx + c * ly, zb + lz], 1), heading


def _project(points, lidar2image, img_aug):
    p = np.concatenate([points, np.ones((len(points), 1))], 1) @ lidar2image.T
    depth = p[:, 2]
    uv = p[:, :2] / depth[:, None]
    raw = uv.copy()
    uv = uv @ img_aug[:2, :2].T + img_aug[:2, 3]
    return uv, raw, depth


def test_points_on_a_box_project_into_its_image_extent(root):
    ds = NuScenes(root, split=None)
    t = _tables(root)
    pairs = 0
    for i in range(len(ds)):
        s = ds[i]
        pts = s["points"].double().numpy()[:, :3]
        lidar2image = s["lidar2image"].double().numpy()
        img_aug = s["img_aug_matrix"].double().numpy()
        for box in s["gt_boxes"].double().numpy():
            corners, heading = _lidar_box_corners(box)
            c, sn = math.cos(heading), math.sin(heading)
            local = pts - box[:3]
            lx, ly = c * local[:, 0] + sn * local[:, 1], -sn * local[:, 0] + c * local[:, 1]
            on_box = (
                (np.abs(lx) <= box[4] / 2 + 1e-3) & (np.abs(ly) <= box[3] / 2 + 1e-3)
                & (local[:, 2] >= -1e-3) & (local[:, 2] <= box[5] + 1e-3)
            )
            assert on_box.sum() >= 8
            for cam in range(6):
                cuv, _, cdepth = _project(corners, lidar2image[cam], img_aug[cam])
                if (cdepth <= 0.5).any():
                    continue
                lo, hi = cuv.min(0), cuv.max(0)
                if lo[0] < 0 or lo[1] < 0 or hi[0] > 704 or hi[1] > 256:
                    continue
                puv, raw, pdepth = _project(pts[on_box], lidar2image[cam], img_aug[cam])
                assert (pdepth > 0).all()
                assert (puv >= lo - 1e-3).all() and (puv <= hi + 1e-3).all()
                # The generator painted the box there: the pixel is not the sky or ground background.
                sd = next(
                    r for r in t["sample_data"]
                    if r["sample_token"] == s["sample_token"] and CAMERAS[cam] in r["filename"]
                )
                u, v = raw.mean(0)
                with Image.open(root / sd["filename"]) as img:
                    pixel = np.asarray(img.convert("RGB").getpixel((int(u), int(v))), dtype=float)
                for background in ((90, 90, 90), (150, 190, 230)):
                    assert np.abs(pixel - background).max() > 20
                pairs += 1
    assert pairs >= 10


def test_gt_boxes_back_to_global(root):
    ds = NuScenes(root, split=None)
    t = _tables(root)
    cat_of = {
        i["token"]: next(c["name"] for c in t["category"] if c["token"] == i["category_token"]) for i in t["instance"]
    }
    for i in range(len(ds)):
        s = ds[i]
        anns = [
            a for a in t["sample_annotation"]
            if a["sample_token"] == s["sample_token"] and category_to_detection_name(cat_of[a["instance_token"]])
        ]
        lidar2global = (s["ego2global"].double() @ s["lidar2ego"].double()).numpy()
        for box, label in zip(s["gt_boxes"].double().numpy(), s["gt_labels"].tolist(), strict=True):
            centre = box[:3] + np.array([0.0, 0.0, box[5] / 2])  # z is the bottom
            g = lidar2global[:3, :3] @ centre + lidar2global[:3, 3]
            ann = min(anns, key=lambda a: np.linalg.norm(np.asarray(a["translation"]) - g))
            np.testing.assert_allclose(g, ann["translation"], atol=1e-3)
            assert DETECTION_CLASSES[label] == category_to_detection_name(cat_of[ann["instance_token"]])
            np.testing.assert_allclose(box[3:6], ann["size"], atol=1e-5)
            # yaw: nuScenes yaw (global) = yaw of the box heading rotated by lidar2global.
            heading = -box[6] - math.pi / 2
            d = lidar2global[:3, :3] @ np.array([math.cos(heading), math.sin(heading), 0.0])
            w, _, _, z = ann["rotation"]
            assert abs(math.remainder(math.atan2(d[1], d[0]) - 2 * math.atan2(z, w), 2 * math.pi)) < 1e-4
            # velocity back in the global frame matches the generator's constant motion
            v = lidar2global[:3, :3] @ np.array([box[7], box[8], 0.0])
            nxt = ann["next"] or ann["token"]
            prv = ann["prev"] or ann["token"]
            pos = {a["token"]: np.asarray(a["translation"]) for a in t["sample_annotation"]}
            steps = (ann["next"] != "") + (ann["prev"] != "")
            np.testing.assert_allclose(v[:2], ((pos[nxt] - pos[prv]) / (0.5 * steps))[:2], atol=1e-3)


def test_errors_name_what_is_missing(root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / VERSION / "category.json").unlink()
    with pytest.raises(ValueError, match="category"):
        NuScenes(broken, split=None)
    broken2 = tmp_path / "broken2"
    shutil.copytree(root, broken2)
    ds = NuScenes(broken2, split=None)
    lidar = next(p for p in (broken2 / "samples" / "LIDAR_TOP").iterdir())
    lidar.unlink()
    i = next(
        i for i, tok in enumerate(ds.sample_tokens)
        if ds.get("sample_data", ds._data[tok]["LIDAR_TOP"])["filename"].endswith(lidar.name)
    )
    with pytest.raises(ValueError, match=lidar.name):
        ds[i]
    with pytest.raises(ValueError, match="sample"):
        ds.get("sample", "nope")
    with pytest.raises(ValueError, match="scene-9999"):
        NuScenes(root, scenes=["scene-9999"])
    with pytest.raises(ValueError, match="splits.json"):
        NuScenes(broken2, split="my_split")
    (broken2 / VERSION / "splits.json").unlink()
    with pytest.raises(ValueError, match="splits.json"):
        NuScenes(broken2, split="my_split")


def test_default_split_and_generator_limits(tmp_path):
    assert default_split("v1.0-mini") == "mini_val" and default_split("v1.0-trainval") == "val"
    assert default_split("v1.0-test") == "test"
    with pytest.raises(ValueError, match="v2"):
        default_split("v2")
    with pytest.raises(ValueError, match="num_scenes"):
        make_synthetic_nuscenes(tmp_path, num_scenes=11)
    with pytest.raises(ValueError, match="samples_per_scene"):
        make_synthetic_nuscenes(tmp_path, samples_per_scene=0)


def test_cached_synthetic_set_is_written_once(root, tmp_path):
    first = cached_synthetic_nuscenes(tmp_path)
    assert first == tmp_path / "synthetic_nuscenes-seed0"
    stamp = (first / VERSION / "scene.json").stat().st_mtime_ns
    assert cached_synthetic_nuscenes(tmp_path) == first
    assert (first / VERSION / "scene.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging folder left behind
    assert (first / VERSION / "sample.json").read_bytes() == (root / VERSION / "sample.json").read_bytes()


def test_quaternions_round_trip():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q)
        back = np.asarray(matrix_quaternion(quaternion_matrix(q)))
        np.testing.assert_allclose(back, q if q[0] >= 0 else -q, atol=1e-12)


def test_collate_fn(root):
    ds = NuScenes(root, split=None, sweeps=1)
    batch = collate_nuscenes([ds[0], ds[1]])
    assert batch["img"].shape == (2, 6, 3, 256, 704)
    assert batch["camera2lidar"].shape == (2, 6, 4, 4) and batch["lidar_aug_matrix"].shape == (2, 4, 4)
    assert [len(p) for p in batch["points"]] == [len(ds[0]["points"]), len(ds[1]["points"])]
    assert batch["sample_token"] == ds.sample_tokens[:2] and set(MODEL_INPUTS) <= set(batch)
    with pytest.raises(ValueError, match="at least one"):
        collate_nuscenes([])


@pytest.mark.parametrize(
    ("name", "speed", "attribute"),
    [
        ("car", 1.0, "vehicle.moving"), ("car", 0.1, "vehicle.parked"), ("bus", 0.0, "vehicle.stopped"),
        ("bus", 3.0, "vehicle.moving"), ("bicycle", 0.5, "cycle.with_rider"),
        ("motorcycle", 0.0, "cycle.without_rider"), ("pedestrian", 1.2, "pedestrian.moving"),
        ("pedestrian", 0.0, "pedestrian.standing"), ("barrier", 2.0, ""), ("traffic_cone", 0.0, ""),
        ("trailer", 0.2, "vehicle.parked"),  # 0.2 m/s is not moving (strictly greater is)
    ],
)
def test_box_attribute_velocity_rule(name, speed, attribute):
    assert box_attribute(name, (speed * 0.6, -speed * 0.8)) == attribute


def test_detection_results_reproduce_the_annotations(root):
    """Ground truth from the loader, written as results, lands on the annotation's global pose and velocity."""
    ds = NuScenes(root, split=None)
    t = _tables(root)
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        boxes = s["gt_boxes"].double().numpy()
        scores = np.linspace(0.9, 0.1, len(boxes))
        records = detection_results(s["sample_token"], boxes, scores, s["gt_labels"], s["lidar2ego"].double(),
                                    s["ego2global"].double())
        assert [r["detection_score"] for r in records] == sorted(scores, reverse=True)
        anns = [a for a in t["sample_annotation"] if a["sample_token"] == s["sample_token"]]
        for r, label in zip(records, s["gt_labels"].tolist(), strict=True):
            ann = min(anns, key=lambda a: np.linalg.norm(np.subtract(a["translation"], r["translation"])))
            np.testing.assert_allclose(r["translation"], ann["translation"], atol=1e-3)
            np.testing.assert_allclose(r["size"], ann["size"], atol=1e-5)
            dot = abs(np.dot(r["rotation"], ann["rotation"]))  # q and -q are the same rotation
            assert dot > 1 - 1e-8
            assert r["detection_name"] == DETECTION_CLASSES[label] and r["sample_token"] == s["sample_token"]
            assert r["attribute_name"] == box_attribute(r["detection_name"], r["velocity"])
            nxt = next((a for a in t["sample_annotation"] if a["token"] == ann["next"]), ann)
            prv = next((a for a in t["sample_annotation"] if a["token"] == ann["prev"]), ann)
            steps = (nxt is not ann) + (prv is not ann)
            velocity = (np.subtract(nxt["translation"], prv["translation"]) / (0.5 * steps))[:2]
            np.testing.assert_allclose(r["velocity"], velocity, atol=1e-3)
            checked += 1
    assert checked == 6 * 7


def test_detection_results_limits_and_errors():
    eye = np.eye(4)
    boxes = np.tile([1.0, 2.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0, 0.0], (8, 1))
    scores = np.arange(8) / 10
    kept = detection_results("s", boxes, scores, np.zeros(8), eye, eye, max_boxes=3)
    assert [r["detection_score"] for r in kept] == [0.7, 0.6, 0.5]
    assert detection_results("s", np.zeros((0, 9)), [], [], eye, eye) == []
    with pytest.raises(ValueError, match="length"):
        detection_results("s", boxes, scores[:3], np.zeros(8), eye, eye)
    with pytest.raises(ValueError, match="labels"):
        detection_results("s", boxes, scores, np.full(8, 10), eye, eye)
    boxes[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detection_results("s", boxes, scores, np.zeros(8), eye, eye)


def test_loader_agrees_with_the_devkit(root):
    """Sweeps merged as the devkit's from_file_multisweep, GT boxes as its get_sample_data (LiDAR frame)."""
    pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (the [nuscenes] extra)")
    from nuscenes import NuScenes as DevkitNuScenes
    from nuscenes.utils.data_classes import LidarPointCloud

    nusc = DevkitNuScenes(version=VERSION, dataroot=str(root), verbose=False)
    ds = NuScenes(root, split=None, sweeps=3)
    for i in range(len(ds)):
        s = ds[i]
        record = nusc.get("sample", s["sample_token"])
        # from_file_multisweep also drops the key frame's close points, which BEVFusion keeps.
        cloud, times = LidarPointCloud.from_file_multisweep(nusc, record, "LIDAR_TOP", "LIDAR_TOP", nsweeps=4)
        ours, lags = s["points"].double().numpy(), s["points"][:, 4].double().numpy()
        theirs, their_lags = cloud.points.T.astype(np.float64), times[0].astype(np.float64)
        np.testing.assert_allclose(ours[lags > 0, :4], theirs[their_lags > 0], atol=2e-4)
        np.testing.assert_allclose(lags[lags > 0], their_lags[their_lags > 0], atol=1e-6)
        key = ours[lags == 0]
        key = key[~(np.abs(key[:, :2]) < 1.0).all(1)]
        np.testing.assert_allclose(key[:, :4], theirs[their_lags == 0], atol=1e-6)

        _, devkit_boxes, _ = nusc.get_sample_data(record["data"]["LIDAR_TOP"])
        lidar2global = (s["ego2global"].double() @ s["lidar2ego"].double()).numpy()
        devkit_boxes = [b for b in devkit_boxes if category_to_detection_name(b.name)]
        assert len(devkit_boxes) == len(s["gt_boxes"])
        for box, label in zip(s["gt_boxes"].double().numpy(), s["gt_labels"].tolist(), strict=True):
            centre = box[:3] + np.array([0.0, 0.0, box[5] / 2])
            match = min(devkit_boxes, key=lambda b: np.linalg.norm(b.center - centre))
            np.testing.assert_allclose(match.center, centre, atol=1e-4)
            np.testing.assert_allclose(match.wlh, box[3:6], atol=1e-6)
            assert category_to_detection_name(match.name) == DETECTION_CLASSES[label]
            yaw_nusc = match.orientation.yaw_pitch_roll[0]
            assert abs(math.remainder(yaw_nusc - (-box[6] - math.pi / 2), 2 * math.pi)) < 1e-5
            # The devkit's boxes carry no velocity: its box_velocity (global) turned into the LiDAR frame.
            velocity = lidar2global[:3, :3].T @ np.nan_to_num(nusc.box_velocity(match.token))
            np.testing.assert_allclose(box[7:9], velocity[:2], atol=1e-4)


# A second database under names the devkit does not know, and the same set without cameras.
CUSTOM = {"version": "v1.0-synth", "scene_names": ["synth-000", "synth-001", "synth-002", "synth-003"],
          "split_names": ("synth_train", "synth_val")}


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory):
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("custom"), num_scenes=4, samples_per_scene=2,
                                   sweeps_per_sample=1, **CUSTOM)


@pytest.fixture(scope="module")
def lidar_only_root(tmp_path_factory):
    return make_synthetic_nuscenes(tmp_path_factory.mktemp("lidar"), num_scenes=4, samples_per_scene=2,
                                   sweeps_per_sample=1, cameras=False, **CUSTOM)


def _scene_names(ds):
    return [ds.get("scene", ds.get("sample", t)["scene_token"])["name"] for t in ds.sample_tokens]


def test_custom_names_and_a_custom_split(custom_root):
    tables = custom_root / "v1.0-synth"
    assert json.loads((tables / "splits.json").read_text()) == {
        "synth_train": ["synth-000", "synth-001"], "synth_val": ["synth-002", "synth-003"]}
    assert [s["name"] for s in json.loads((tables / "scene.json").read_text())] == CUSTOM["scene_names"]
    ds = NuScenes(custom_root, version="v1.0-synth", split="synth_val", sweeps=1)
    assert _scene_names(ds) == ["synth-002"] * 2 + ["synth-003"] * 2
    assert ds.has_cameras and ds[0]["images"].shape == (6, 3, 256, 704)
    assert len(NuScenes(custom_root, version="v1.0-synth", split=None)) == 8
    with pytest.raises(ValueError, match="no nuScenes version 'v1.0-mini'"):
        NuScenes(custom_root, split="synth_val")
    # The devkit resolves the custom split to the same samples.
    pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (the [nuscenes] extra)")
    from nuscenes import NuScenes as DevkitNuScenes
    from nuscenes.eval.common.loaders import get_samples_of_custom_split

    nusc = DevkitNuScenes(version="v1.0-synth", dataroot=str(custom_root), verbose=False)
    assert set(get_samples_of_custom_split("synth_val", nusc)) == set(ds.sample_tokens)


def test_a_split_resolves_as_the_devkit_resolves_it(root, tmp_path):
    """Predefined names first (the devkit ignores splits.json for them), scenes the database lacks skipped."""
    pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (the [nuscenes] extra)")
    from nuscenes.utils.splits import create_splits_scenes

    partial = tmp_path / "partial"
    shutil.copytree(root / VERSION, partial / VERSION)
    (partial / VERSION / "splits.json").unlink()
    # mini_val is scene-0103 and scene-0916; the database holds scene-0103 only.
    assert set(create_splits_scenes()["mini_val"]) == {"scene-0103", "scene-0916"}
    assert _scene_names(NuScenes(partial, split="mini_val")) == ["scene-0103"] * 3
    assert _scene_names(NuScenes(partial, split="mini_train")) == ["scene-0061"] * 3
    (partial / VERSION / "splits.json").write_text(json.dumps({"mini_val": ["scene-0061"], "mine": ["scene-0061"]}))
    assert _scene_names(NuScenes(partial, split="mini_val")) == ["scene-0103"] * 3
    assert _scene_names(NuScenes(partial, split="mine")) == ["scene-0061"] * 3
    assert _scene_names(NuScenes(partial, split="val")) == ["scene-0103"] * 3  # mini scenes are trainval's
    with pytest.raises(ValueError, match="none of the 150 scenes of split 'test'"):
        NuScenes(partial, split="test")
    with pytest.raises(ValueError, match="scene-0916"):  # named scenes must all be there
        NuScenes(partial, scenes=["scene-0103", "scene-0916"])
    (partial / VERSION / "splits.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map split names to lists of scene names"):
        NuScenes(partial, split="mine")


def test_a_lidar_only_database(custom_root, lidar_only_root):
    """No camera sensor, calibration, sample_data, ego pose or image; the LiDAR data and annotations are the
    camera set's, byte for byte, and the loader reads them with cameras=False."""
    tables = lidar_only_root / "v1.0-synth"
    sensors = json.loads((tables / "sensor.json").read_text())
    assert [s["channel"] for s in sensors] == ["LIDAR_TOP"]
    assert sorted(p.name for p in (lidar_only_root / "samples").iterdir()) == ["LIDAR_TOP"]
    assert not list(lidar_only_root.rglob("*.jpg"))
    for name in ("sample_annotation", "sample", "scene", "instance", "attribute"):
        assert (tables / f"{name}.json").read_bytes() == (custom_root / "v1.0-synth" / f"{name}.json").read_bytes()
    for cloud in (lidar_only_root / "sweeps" / "LIDAR_TOP").iterdir():
        assert cloud.read_bytes() == (custom_root / "sweeps" / "LIDAR_TOP" / cloud.name).read_bytes()
    ds = NuScenes(lidar_only_root, version="v1.0-synth", split="synth_val", sweeps=1, cameras=False)
    with_cameras = NuScenes(custom_root, version="v1.0-synth", split="synth_val", sweeps=1)
    assert not ds.has_cameras and ds.sample_tokens == with_cameras.sample_tokens
    for i in range(len(ds)):
        s, full = ds[i], with_cameras[i]
        assert set(s) == set(full) - {"images", "camera2lidar", "camera_intrinsics", "lidar2image",
                                      "img_aug_matrix"}
        for key in ("points", "gt_boxes", "gt_labels", "lidar2ego", "ego2global"):
            assert torch.equal(s[key], full[key]), key
        assert s["gt_attributes"] == full["gt_attributes"]
    batch = collate_nuscenes([ds[0], ds[1]])
    assert "img" not in batch and batch["lidar2ego"].shape == (2, 4, 4) and len(batch["gt_attributes"]) == 2
    with pytest.raises(ValueError, match="with and without cameras"):
        collate_nuscenes([ds[0], with_cameras[0]])
    with pytest.raises(ValueError, match="no key-frame sample_data for CAM_FRONT .*pass cameras=False"):
        NuScenes(lidar_only_root, version="v1.0-synth")[0]


def test_gt_attributes_are_the_annotations_own(root):
    """The devkit's ground truth carries each annotation's attribute; so does the loader's, and the results
    writer keeps it when given (the velocity rule would call the still truck of scene-0061 parked)."""
    t = _tables(root)
    attribute_name = {a["token"]: a["name"] for a in t["attribute"]}
    ds = NuScenes(root, split=None)
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        records = detection_results(s["sample_token"], s["gt_boxes"].double(), np.ones(len(s["gt_boxes"])),
                                    s["gt_labels"], s["lidar2ego"].double(), s["ego2global"].double(),
                                    attributes=s["gt_attributes"])
        anns = [a for a in t["sample_annotation"] if a["sample_token"] == s["sample_token"]]
        for r, attribute in zip(records, s["gt_attributes"], strict=True):
            ann = min(anns, key=lambda a: np.linalg.norm(np.subtract(a["translation"], r["translation"])))
            assert attribute == "".join(attribute_name[k] for k in ann["attribute_tokens"])
            assert r["attribute_name"] == attribute
            seen.add((r["detection_name"], attribute, box_attribute(r["detection_name"], r["velocity"])))
    assert ("truck", "vehicle.stopped", "vehicle.parked") in seen
    eye = np.eye(4)
    with pytest.raises(ValueError, match="attributes must be 2 strings"):
        detection_results("s", np.zeros((2, 9)), [1, 1], [0, 0], eye, eye, attributes=["vehicle.moving"])


def test_generator_options_and_their_errors(tmp_path):
    with pytest.raises(ValueError, match="scene_names must hold num_scenes = 2"):
        make_synthetic_nuscenes(tmp_path, num_scenes=2, scene_names=["a"])
    with pytest.raises(ValueError, match="distinct"):
        make_synthetic_nuscenes(tmp_path, num_scenes=2, scene_names=["a", "a"])
    with pytest.raises(ValueError, match="version 'v1/x' is not a usable name"):
        make_synthetic_nuscenes(tmp_path, version="v1/x")
    with pytest.raises(ValueError, match="split_names must be two different names"):
        make_synthetic_nuscenes(tmp_path, split_names=("a", "a"))
    # More than the 10 official names once the names are one's own.
    many = make_synthetic_nuscenes(tmp_path / "many", num_scenes=12, samples_per_scene=1, sweeps_per_sample=0,
                                   scene_names=[f"s{k:02d}" for k in range(12)], cameras=False)
    assert json.loads((many / VERSION / "splits.json").read_text())["mini_val"] == ["s10", "s11"]
