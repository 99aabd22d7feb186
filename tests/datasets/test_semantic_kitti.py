import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from torchsparse import SparseTensor
from torchsparse.datasets import (
    OFFICIAL,
    OFFICIAL_CLASS_NAMES,
    RAW_LABEL_NAMES,
    SPVNAS,
    SemanticKITTI,
    collate_semantic_kitti,
    get_label_map,
    read_labels,
    read_scan,
    seed_worker,
    voxelize_scan,
    write_labels,
)

ASSETS = Path(__file__).resolve().parents[2] / "assets/semantickitti"
REAL_POINTS = 123_389
REAL_VOXELS = 94_625  # round(xyz / 0.05) in float32, as SPVNAS; float64 division would give 94,626

# semantic-kitti-api config/semantic-kitti.yaml learning_map, written out independently of the module.
OFFICIAL_EXPECTED = {
    0: 0, 1: 0, 52: 0, 99: 0, 10: 1, 252: 1, 11: 2, 15: 3, 18: 4, 258: 4, 13: 5, 16: 5, 20: 5, 256: 5,
    257: 5, 259: 5, 30: 6, 254: 6, 31: 7, 253: 7, 32: 8, 255: 8, 40: 9, 60: 9, 44: 10, 48: 11, 49: 12,
    50: 13, 51: 14, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19,
}
OFFICIAL_INV = [0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81]
# SPVNAS core/datasets/semantic_kitti.py: kept classes numbered in ascending raw id; the rest -> 255.
SPVNAS_EXPECTED = {
    10: 0, 252: 0, 11: 1, 15: 2, 18: 3, 258: 3, 20: 4, 259: 4, 30: 5, 254: 5, 31: 6, 253: 6, 32: 7, 255: 7,
    40: 8, 44: 9, 48: 10, 49: 11, 50: 12, 51: 13, 70: 14, 71: 15, 72: 16, 80: 17, 81: 18,
    0: 255, 1: 255, 13: 255, 16: 255, 52: 255, 60: 255, 99: 255, 256: 255, 257: 255,
}
RAW_IDS = np.array(sorted(RAW_LABEL_NAMES) + [7, 100, 200], dtype=np.int64)  # 7, 100, 200: unknown ids


def _write_scan(path: Path, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    points.astype(np.float32).tofile(path)


def _fake_points(gen: np.random.Generator, n: int) -> np.ndarray:
    xyz = gen.uniform(-0.6, 0.6, (n, 3))  # a small cube, so many points share a 5 cm voxel
    xyz[: n // 4] += 5.0  # and a second, distant cluster
    return np.concatenate([xyz, gen.uniform(0, 1, (n, 1))], 1).astype(np.float32)


@pytest.fixture
def fake_root(tmp_path):
    """sequences 08 (3 labelled scans), 00 (1 labelled scan) and 11 (2 scans, no labels)."""
    gen = np.random.default_rng(0)
    truth = {}
    for seq, count, labelled in (("08", 3, True), ("00", 1, True), ("11", 2, False)):
        for k in range(count):
            n = int(gen.integers(3000, 6000))
            points = _fake_points(gen, n)
            scan = tmp_path / "sequences" / seq / "velodyne" / f"{k:06d}.bin"
            _write_scan(scan, points)
            semantic = gen.choice(RAW_IDS, n)
            instance = gen.integers(0, 2**16, n)
            if labelled:
                write_labels(tmp_path / "sequences" / seq / "labels" / f"{k:06d}.label", semantic, instance)
            truth[str(scan)] = (points, semantic)
    return tmp_path, truth


def _first_points(inverse: torch.Tensor, num_voxels: int) -> torch.Tensor:
    rows = torch.arange(inverse.numel())
    valid = inverse >= 0
    first = torch.full((num_voxels,), inverse.numel(), dtype=torch.int64)
    return first.scatter_reduce(0, inverse[valid], rows[valid], "amin")


def test_official_label_map_matches_the_yaml():
    assert OFFICIAL.name == "official" and OFFICIAL.num_classes == 20 and OFFICIAL.ignore_index == 0
    for raw in range(260):
        assert OFFICIAL.raw_to_class[raw] == OFFICIAL_EXPECTED.get(raw, 0), raw
    assert OFFICIAL.class_to_raw.tolist() == OFFICIAL_INV
    assert OFFICIAL.class_names[1:] == OFFICIAL_CLASS_NAMES
    assert OFFICIAL_CLASS_NAMES == (
        "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
        "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain",
        "pole", "traffic-sign",
    )
    learnable = np.array(OFFICIAL_INV[1:])
    np.testing.assert_array_equal(OFFICIAL.to_raw(OFFICIAL.to_classes(learnable)), learnable)
    np.testing.assert_array_equal(OFFICIAL.to_classes(OFFICIAL.to_raw(np.arange(20))), np.arange(20))
    # unknown and out-of-table ids are ignored
    np.testing.assert_array_equal(OFFICIAL.to_classes(np.array([7, 259, 260, 70000, -3])), [0, 5, 0, 0, 0])


def test_spvnas_label_map():
    assert SPVNAS.name == "spvnas" and SPVNAS.num_classes == 19 and SPVNAS.ignore_index == 255
    for raw in range(260):
        assert SPVNAS.raw_to_class[raw] == SPVNAS_EXPECTED.get(raw, 255), raw
    assert SPVNAS.class_names == OFFICIAL_CLASS_NAMES  # same order as official classes 1..19
    assert SPVNAS.class_to_raw.tolist() == OFFICIAL_INV[1:]
    classes = SPVNAS.to_classes(RAW_IDS)
    assert classes.dtype == np.int64
    learnable = np.array(OFFICIAL_INV[1:])
    np.testing.assert_array_equal(SPVNAS.to_raw(SPVNAS.to_classes(learnable)), learnable)
    # the ignore class writes as raw 0 ("unlabeled")
    np.testing.assert_array_equal(SPVNAS.to_raw(np.array([255, 0, 18])), [0, 10, 81])
    with pytest.raises(ValueError, match="classes must lie in 0..18"):
        SPVNAS.to_raw(np.array([19]))
    with pytest.raises(TypeError, match="raw_ids"):
        SPVNAS.to_classes(np.array([1.0]))


def test_label_maps_on_torch_tensors():
    raw = torch.tensor([[10, 252], [60, 999]])
    assert SPVNAS.to_classes(raw).tolist() == [[0, 0], [255, 255]]
    assert OFFICIAL.to_classes(raw).tolist() == [[1, 1], [9, 0]]
    out = OFFICIAL.to_raw(torch.tensor([9, 0], dtype=torch.int32))
    assert out.dtype == torch.int64 and out.tolist() == [40, 0]


def test_label_map_tables_are_read_only():
    with pytest.raises(ValueError):
        SPVNAS.raw_to_class[10] = 3
    with pytest.raises(ValueError):
        OFFICIAL.class_to_raw[1] = 3


def test_get_label_map_and_colors():
    assert get_label_map("spvnas") is SPVNAS and get_label_map("official") is OFFICIAL
    assert get_label_map(SPVNAS) is SPVNAS
    with pytest.raises(ValueError, match="label_map"):
        get_label_map("cityscapes")
    with pytest.raises(TypeError, match="label_map"):
        get_label_map(3)
    colors = OFFICIAL.colors_rgb()
    assert colors.dtype == np.uint8 and colors.shape == (20, 3)
    assert colors[0].tolist() == [0, 0, 0]
    assert colors[1].tolist() == [100, 150, 245]  # car: BGR 245, 150, 100 in the yaml
    assert colors[9].tolist() == [255, 0, 255]  # road
    assert colors[19].tolist() == [255, 0, 0]  # traffic-sign: BGR 0, 0, 255
    np.testing.assert_array_equal(SPVNAS.colors_rgb(), colors[1:])


def test_labels_round_trip(tmp_path):
    gen = np.random.default_rng(1)
    semantic = gen.choice(RAW_IDS, 1000)
    instance = gen.integers(0, 2**16, 1000)
    path = tmp_path / "deep" / "folder" / "000001.label"
    write_labels(path, torch.from_numpy(semantic), instance)
    raw = np.fromfile(path, dtype=np.uint32)
    np.testing.assert_array_equal(raw, (instance.astype(np.uint32) << 16) | semantic.astype(np.uint32))
    sem, inst = read_labels(path, num_points=1000)
    assert sem.dtype == np.int64 and inst.dtype == np.int64
    np.testing.assert_array_equal(sem, semantic)
    np.testing.assert_array_equal(inst, instance)
    write_labels(path, semantic)
    np.testing.assert_array_equal(read_labels(path)[1], np.zeros(1000))


def test_io_errors(tmp_path):
    bad = tmp_path / "bad.bin"
    np.zeros(9, dtype=np.float32).tofile(bad)
    with pytest.raises(ValueError, match=r"bad\.bin.*multiple of 16"):
        read_scan(bad)
    with pytest.raises(ValueError, match=r"missing\.bin.*does not exist"):
        read_scan(tmp_path / "missing.bin")
    label = tmp_path / "x.label"
    write_labels(label, np.arange(5))
    with pytest.raises(ValueError, match=r"x\.label.*holds 5 labels.*6 points"):
        read_labels(label, num_points=6)
    label.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"x\.label.*multiple of 4"):
        read_labels(label)
    with pytest.raises(ValueError, match="semantic must lie"):
        write_labels(tmp_path / "y.label", np.array([70000]))
    with pytest.raises(ValueError, match="instance has shape"):
        write_labels(tmp_path / "y.label", np.array([1, 2]), np.array([1]))
    with pytest.raises(TypeError, match="semantic"):
        write_labels(tmp_path / "y.label", np.array([1.5]))


def test_voxelize_scan():
    gen = np.random.default_rng(2)
    points = _fake_points(gen, 4000)
    points[:, :3] -= 7.3  # negative coordinates
    lidar, index, inverse = voxelize_scan(points, 0.05)
    m = len(lidar)
    assert isinstance(lidar, SparseTensor) and 0 < m < 4000
    assert lidar.feats.dtype == torch.float32 and lidar.feats.shape == (m, 4)
    assert lidar.coords.dtype == torch.int32 and lidar.coords.shape == (m, 4)
    assert index.dtype == torch.int64 and index.shape == (m,)
    assert inverse.dtype == torch.int64 and inverse.shape == (4000,)
    assert bool((lidar.coords[:, 0] == 0).all())
    assert lidar.coords[:, 1:].amin(0).tolist() == [0, 0, 0]
    assert torch.unique(lidar.coords, dim=0).shape[0] == m
    cells = np.round(points[:, :3] / np.float32(0.05)).astype(np.int64)
    cells -= cells.min(0)
    # every point lands in its own voxel, and each voxel keeps its first point
    np.testing.assert_array_equal(lidar.coords[inverse, 1:].numpy(), cells)
    assert torch.equal(index, _first_points(inverse, m))
    assert torch.equal(lidar.feats, torch.from_numpy(points[index.numpy()]))
    assert lidar.spatial_range == (1, *(cells.max(0) + 1).tolist())
    # torch input gives the same result
    again, index_t, _ = voxelize_scan(torch.from_numpy(points), 0.05)
    assert torch.equal(again.coords, lidar.coords) and torch.equal(index_t, index)


def test_voxelize_scan_errors():
    points = np.zeros((3, 4), dtype=np.float32)
    points[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        voxelize_scan(points)
    points[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        voxelize_scan(points)
    with pytest.raises(ValueError, match="at least one point"):
        voxelize_scan(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        voxelize_scan(np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize_scan(np.zeros((3, 4), dtype=np.float32), 0.0)
    with pytest.raises(TypeError, match="points"):
        voxelize_scan(np.zeros((3, 4), dtype=np.int64))


@pytest.mark.parametrize("label_map", ["spvnas", "official"])
def test_loader_items(fake_root, label_map):
    root, truth = fake_root
    dataset = SemanticKITTI(root, label_map=label_map)
    assert len(dataset) == 3 and dataset.sequences == ("08",)
    lm = get_label_map(label_map)
    for k in range(len(dataset)):
        item = dataset[k]
        points, semantic = truth[item["file_name"]]
        n = points.shape[0]
        lidar, targets = item["lidar"], item["targets"]
        per_point, inverse = item["targets_mapped"], item["inverse_map"]
        m = len(lidar)
        assert item["num_points"] == n and item["file_name"].endswith(f"08/velodyne/{k:06d}.bin")
        assert targets.dtype == torch.int64 and targets.shape == (m,)
        assert per_point.dtype == torch.int64 and per_point.shape == (n,)
        assert inverse.dtype == torch.int64 and inverse.shape == (n,)
        assert int(inverse.min()) == 0 and int(inverse.max()) == m - 1
        expected = np.array([SPVNAS_EXPECTED.get(int(r), 255) if label_map == "spvnas"
                             else OFFICIAL_EXPECTED.get(int(r), 0) for r in semantic])
        np.testing.assert_array_equal(per_point.numpy(), expected)
        assert int((per_point == lm.ignore_index).sum()) > 0
        first = _first_points(inverse, m)
        assert torch.equal(lidar.feats, torch.from_numpy(points)[first])
        assert torch.equal(targets, per_point[first])
        cells = np.round(points[:, :3] / np.float32(0.05)).astype(np.int64)
        np.testing.assert_array_equal(lidar.coords[inverse, 1:].numpy(), cells - cells.min(0))


def test_splits_and_unlabelled_sequences(fake_root):
    root, _truth = fake_root
    assert len(SemanticKITTI(root, sequences=[8, "00"])) == 4
    test = SemanticKITTI(root, sequences=["11"])
    item = test[1]
    assert set(item) == {"lidar", "inverse_map", "num_points", "file_name"}
    assert item["file_name"].endswith("11/velodyne/000001.bin")
    assert test[-1]["file_name"] == item["file_name"]
    with pytest.raises(IndexError):
        test[2]
    with pytest.raises(ValueError, match="sequence 12"):
        SemanticKITTI(root, split="test")  # 11 exists, 12 does not


def test_training_cap_and_seed(fake_root):
    root, truth = fake_root
    full = len(SemanticKITTI(root)[0]["lidar"])
    assert len(SemanticKITTI(root, max_voxels=10)[0]["lidar"]) == full  # test time never caps

    a = SemanticKITTI(root, training=True, max_voxels=200, seed=7)
    b = SemanticKITTI(root, training=True, max_voxels=200, seed=7)
    c = SemanticKITTI(root, training=True, max_voxels=200, seed=8)
    for k in (0, 1, 0):
        xa, xb, xc = a[k], b[k], c[k]
        assert torch.equal(xa["lidar"].feats, xb["lidar"].feats)
        assert torch.equal(xa["lidar"].coords, xb["lidar"].coords)
        assert torch.equal(xa["inverse_map"], xb["inverse_map"])
        assert not torch.equal(xa["lidar"].feats, xc["lidar"].feats)
    item = SemanticKITTI(root, training=True, max_voxels=200, seed=3)[0]
    points, _ = truth[item["file_name"]]
    lidar, inverse, per_point = item["lidar"], item["inverse_map"], item["targets_mapped"]
    assert len(lidar) == 200 and item["targets"].shape == (200,)
    assert torch.unique(lidar.coords, dim=0).shape[0] == 200
    kept = inverse >= 0
    assert 0 < int(kept.sum()) < points.shape[0]
    assert sorted(torch.unique(inverse[kept]).tolist()) == list(range(200))
    first = _first_points(inverse, 200)
    assert torch.equal(item["targets"], per_point[first])
    # features are the rotated and scaled xyz of each voxel's first point, remission unchanged
    original = torch.from_numpy(points)[first].double()
    feats = lidar.feats.double()
    assert torch.equal(lidar.feats[:, 3], original[:, 3].float())
    far = original[:, :2].norm(dim=1) > 0.2  # away from the z axis, where float32 ratios are noisy
    original, feats = original[far], feats[far]
    assert original.shape[0] > 50
    scale = (feats[:, :3].norm(dim=1) / original[:, :3].norm(dim=1))
    assert float(scale.std()) < 1e-5 and 0.95 <= float(scale.mean()) <= 1.05
    assert torch.allclose(feats[:, 2], original[:, 2] * scale.mean(), atol=1e-5)
    # row-vector times [[c, s, 0], [-s, c, 0], [0, 0, 1]]: x' = c x - s y, y' = s x + c y
    cos = (feats[:, 0] * original[:, 0] + feats[:, 1] * original[:, 1]) / (original[:, :2].norm(dim=1) ** 2)
    sin = (feats[:, 1] * original[:, 0] - feats[:, 0] * original[:, 1]) / (original[:, :2].norm(dim=1) ** 2)
    assert float(cos.std()) < 1e-5 and float(sin.std()) < 1e-5
    theta = np.arctan2(float(sin.mean()), float(cos.mean())) % (2 * np.pi)
    gen = np.random.default_rng(3)
    assert theta == pytest.approx(gen.uniform(0, 2 * np.pi), abs=1e-5)
    assert float(scale.mean()) == pytest.approx(gen.uniform(0.95, 1.05), abs=1e-5)


def test_loader_errors(fake_root, tmp_path):
    root, _truth = fake_root
    with pytest.raises(ValueError, match="root"):
        SemanticKITTI(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="sequence 05"):
        SemanticKITTI(root, sequences=[5])
    (root / "sequences" / "09" / "velodyne").mkdir(parents=True)
    with pytest.raises(ValueError, match="sequence 09.*no .bin scans"):
        SemanticKITTI(root, sequences=[9])
    with pytest.raises(ValueError, match="label_map"):
        SemanticKITTI(root, label_map="nuscenes")
    with pytest.raises(ValueError, match="split"):
        SemanticKITTI(root, split="trainval")
    with pytest.raises(ValueError, match="either split or sequences"):
        SemanticKITTI(root, split="val", sequences=[8])
    with pytest.raises(ValueError, match="max_voxels"):
        SemanticKITTI(root, max_voxels=0)

    labels = root / "sequences" / "08" / "labels"
    (labels / "000001.label").rename(tmp_path / "kept.label")
    with pytest.raises(ValueError, match=r"000001\.bin.*no label file"):
        SemanticKITTI(root)
    (tmp_path / "kept.label").rename(labels / "000001.label")

    dataset = SemanticKITTI(root)
    write_labels(labels / "000002.label", np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"000002\.label.*holds 10 labels"):
        dataset[2]
    scan = root / "sequences" / "08" / "velodyne" / "000000.bin"
    scan.write_bytes(scan.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"000000\.bin.*multiple of 16"):
        dataset[0]


def test_collate_with_dataloader(fake_root):
    root, _truth = fake_root
    dataset = SemanticKITTI(root)
    items = [dataset[k] for k in range(3)]
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=SemanticKITTI.collate_fn)))
    lidar = batch["lidar"]
    sizes = [len(x["lidar"]) for x in items]
    assert isinstance(lidar, SparseTensor) and len(lidar) == sum(sizes)
    assert lidar.coords[:, 0].tolist() == [k for k, s in enumerate(sizes) for _ in range(s)]
    assert torch.equal(lidar.feats, torch.cat([x["lidar"].feats for x in items]))
    assert torch.equal(batch["targets"], torch.cat([x["targets"] for x in items]))
    for key in ("targets_mapped", "inverse_map"):
        assert isinstance(batch[key], list) and len(batch[key]) == 3
        for got, item in zip(batch[key], items):
            assert torch.equal(got, item[key])
    assert batch["num_points"] == [x["num_points"] for x in items]
    assert batch["file_name"] == dataset.files
    with pytest.raises(ValueError, match="keys"):
        collate_semantic_kitti([items[0], SemanticKITTI(root, sequences=[11])[0]])
    with pytest.raises(ValueError, match="at least one"):
        collate_semantic_kitti([])


def test_seed_worker_gives_workers_their_own_streams(fake_root):
    root, _ = fake_root
    folder = root / "sequences" / "08"
    for sub, ext in (("velodyne", ".bin"), ("labels", ".label")):
        shutil.copy(folder / sub / f"000000{ext}", folder / sub / f"000001{ext}")  # scans 0 and 1 identical

    def first_two(worker_init_fn):
        dataset = SemanticKITTI(root, training=True, seed=5)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_semantic_kitti,
                            worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(0))
        batches = iter(loader)
        return [next(batches)["lidar"].feats for _ in range(2)]

    plain = first_two(None)
    assert torch.equal(plain[0], plain[1])  # each worker copied the same generator state
    seeded = first_two(seed_worker)
    assert not torch.equal(seeded[0], seeded[1])
    again = first_two(seed_worker)
    assert all(torch.equal(x, y) for x, y in zip(seeded, again))
    with pytest.raises(ValueError, match="worker"):
        seed_worker(0)


def test_real_scan():
    points = read_scan(ASSETS / "000000.bin")
    assert points.dtype == np.float32 and points.shape == (REAL_POINTS, 4)
    semantic, instance = read_labels(ASSETS / "000000.label", num_points=REAL_POINTS)
    assert int(instance.max()) > 0
    lidar, index, inverse = voxelize_scan(points)
    assert len(lidar) == REAL_VOXELS and inverse.shape == (REAL_POINTS,)
    assert torch.equal(lidar.feats, torch.from_numpy(points[index.numpy()]))
    spvnas = SPVNAS.to_classes(semantic)
    official = OFFICIAL.to_classes(semantic)
    # the scan holds unlabeled 0, outlier 1, other-structure 52 and other-object 99, ignored by both maps
    assert int((spvnas == 255).sum()) == int((official == 0).sum()) == 4458 + 5 + 809 + 1652
    assert int((spvnas == 0).sum()) == int((official == 1).sum()) == 544 + 990  # car + moving-car


def test_real_scan_through_the_loader(tmp_path):
    folder = tmp_path / "sequences" / "08"
    (folder / "velodyne").mkdir(parents=True)
    (folder / "labels").mkdir()
    shutil.copy(ASSETS / "000000.bin", folder / "velodyne" / "000000.bin")
    shutil.copy(ASSETS / "000000.label", folder / "labels" / "000000.label")
    item = SemanticKITTI(tmp_path, split="val")[0]
    assert item["num_points"] == REAL_POINTS and len(item["lidar"]) == REAL_VOXELS
    first = _first_points(item["inverse_map"], REAL_VOXELS)
    assert torch.equal(item["targets"], item["targets_mapped"][first])
    capped = SemanticKITTI(tmp_path, training=True, seed=0)[0]
    assert len(capped["lidar"]) == 80000 and capped["targets"].shape == (80000,)
