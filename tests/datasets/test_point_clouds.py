"""datasets/point_clouds.py: .bin, .pcd and .ply files, and the [io] extra's open3d round trip.

With TORCHSPARSE_EXPECT_OPEN3D=1 (set by .ci/wheel, which installs the wheel with the [io] extra) a missing open3d
fails the round trip instead of skipping it."""

import importlib.util
import os

import numpy as np
import pytest

from torchsparse.assets import sample_scan
from torchsparse.datasets.point_clouds import read_points
from torchsparse.datasets.semantic_kitti import read_scan


def _open3d():
    if importlib.util.find_spec("open3d") is None and os.environ.get("TORCHSPARSE_EXPECT_OPEN3D") == "1":
        pytest.fail("TORCHSPARSE_EXPECT_OPEN3D=1 but open3d (the [io] extra) is not installed")
    return pytest.importorskip("open3d", reason="needs the [io] extra (open3d)")


def test_point_cloud_files(tmp_path):
    ply = tmp_path / "cloud.ply"
    xyz = np.random.default_rng(0).uniform(-5, 5, (500, 3)).astype(np.float32)
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 500\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n" + "\n".join(" ".join(map(str, p)) for p in xyz) + "\n"
    )
    if importlib.util.find_spec("open3d") is None:
        with pytest.raises(ValueError, match="needs open3d"):
            read_points(ply)
    else:
        np.testing.assert_allclose(read_points(ply)[:, :3], xyz, rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported point-cloud format"):
        read_points(tmp_path / "cloud.xyz")
    (tmp_path / "bad.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="bad.bin"):
        read_points(tmp_path / "bad.bin")


@pytest.mark.parametrize("suffix", [".pcd", ".ply"])
@pytest.mark.parametrize("binary", [True, False])
def test_open3d_round_trip_of_the_real_scan(tmp_path, suffix, binary):
    open3d = _open3d()
    points = read_scan(sample_scan())
    cloud = open3d.geometry.PointCloud()
    cloud.points = open3d.utility.Vector3dVector(points[:, :3].astype(np.float64))
    path = tmp_path / f"scan{suffix}"
    assert open3d.io.write_point_cloud(str(path), cloud, write_ascii=not binary)
    read = read_points(path)
    assert read.dtype == np.float32 and read.shape == points.shape
    # Binary files hold the float32 values (exact up to open3d's float64 round trip); ASCII .ply keeps 6
    # significant digits (up to 5e-5 m off at 10-80 m).
    np.testing.assert_allclose(read[:, :3], points[:, :3], rtol=0 if binary else 1e-5, atol=1e-5)
    assert (read[:, 3] == 0).all()
