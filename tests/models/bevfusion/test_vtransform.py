import json
import math

import pytest
import torch
from torch import nn

from torchsparse.models.bevfusion.vtransform import DepthLSSTransform, LSSTransform
from torchsparse.nn import BEVPool, BEVPoolCache
from torchsparse.testing.bevfusion import camera_rig, official_dump, official_keys

PREFIX = "encoders.camera.vtransform."
DUMP = official_dump()
REFERENCE = official_keys(PREFIX)

# nuScenes-like camera: 1600 x 900 images resized by 0.48 to 768 x 432 and cropped to 704 x 256 (the test-time
# ImageAug3D of configs/nuscenes/default.yaml: crop 176 rows from the top, 32 columns from each side).
FX, CX, CY = 1266.4, 816.3, 491.5
RESIZE, CROP = 0.48, (32.0, 176.0)
# Camera frame (x right, y down, z forward) -> LiDAR frame (x forward, y left, z up) for a camera looking
# along LiDAR +x: its columns are the camera axes in the LiDAR frame.
LOOK_ALONG_X = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _homogeneous(rot: torch.Tensor, trans) -> torch.Tensor:
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = rot
    m[:3, 3] = torch.as_tensor(trans, dtype=torch.float64)
    return m


def _intrinsics(fx=FX, cx=CX, cy=CY) -> torch.Tensor:
    k = torch.eye(4, dtype=torch.float64)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fx, cx, cy
    return k


def _img_aug(scale=RESIZE, crop=CROP, angle=0.0) -> torch.Tensor:
    """Original pixel -> augmented pixel, as ImageAug3D builds it: resize, crop, then rotate about the
    centre of the 704 x 256 result."""
    m = torch.eye(4, dtype=torch.float64)
    m[0, 0] = m[1, 1] = scale
    m[0, 3], m[1, 3] = -crop[0], -crop[1]
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        centre = torch.tensor([352.0, 128.0, 0.0], dtype=torch.float64)
        rot = torch.eye(4, dtype=torch.float64)
        rot[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        rot[:3, 3] = centre - rot[:3, :3] @ centre
        m = rot @ m
    return m


def _lidar_aug(angle=0.3, scale=1.05, trans=(0.4, -0.2, 0.1)) -> torch.Tensor:
    return _homogeneous(scale * _rot_z(angle), trans)


def _rig(num_cameras=6, batch_size=1, lidar_aug=None):
    """The nuScenes-like rig of torchsparse.testing.bevfusion (the constants above describe the same cameras)."""
    return camera_rig(num_cameras, batch_size, lidar_aug)


def _project(points, lidar2image, img_aug, lidar_aug):
    """Independent pinhole projection in float64: (P, 3) augmented-LiDAR points -> (P, 2) augmented pixels
    (u, v) and (P,) depths."""
    homo = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], 1).t()
    cam = lidar2image.double() @ torch.inverse(lidar_aug.double()) @ homo
    uv = cam[:2] / cam[2]
    uv = img_aug.double()[:2, :2] @ uv + img_aug.double()[:2, 3:4]
    return uv.t(), cam[2]


def _split_matrices(metas):
    c2l, k, aug, laug = (
        metas[n] for n in ("camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar_aug_matrix")
    )
    return (c2l[..., :3, :3], c2l[..., :3, 3], k[..., :3, :3], aug[..., :3, :3], aug[..., :3, 3],
            laug[..., :3, :3], laug[..., :3, 3])  # fmt: skip


def test_keys_shapes_and_order_equal_the_release():
    model = DepthLSSTransform()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == REFERENCE
    assert len(REFERENCE) == 59
    # frustum, dx, bx and nx are frozen parameters (not buffers), counted in the release's parameter total.
    assert (
        sum(p.numel() for p in model.parameters())
        == DUMP["prefix_param_counts"]["encoders.camera.vtransform"]
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"dx", "bx", "nx", "frustum"}
    assert not dict(model.named_buffers()).keys() & frozen
    for key, dtype in DUMP["dtypes"].items():
        if key.startswith(PREFIX):
            assert str(model.state_dict()[key[len(PREFIX) :]].dtype) == f"torch.{dtype}"
    state = {
        k: torch.randn(v) if v else torch.tensor(7)
        for k, v in REFERENCE
        if k not in ("dx", "bx", "nx", "frustum")
    }
    state.update({k: v.clone() for k, v in model.state_dict().items() if k in ("dx", "bx", "nx", "frustum")})
    model.load_state_dict(state, strict=True)


def test_grid_and_frustum_equal_the_release():
    model = DepthLSSTransform()
    for key, value in DUMP["deterministic_values"].items():
        tensor = model.state_dict()[key[len(PREFIX) :]]
        assert tensor.tolist() == value
    assert model.nx.dtype == torch.int64 and not model.nx.requires_grad
    for index, value in DUMP["frustum_corners"].items():
        assert model.frustum[tuple(json.loads(index))].tolist() == value
    assert model.D == 118 and model.C == 80


def test_lss_transform_follows_the_segmentation_config():
    model = LSSTransform()
    keys = [k for k in model.state_dict() if not k.startswith("downsample.")]
    assert keys == ["dx", "bx", "nx", "frustum", "depthnet.weight", "depthnet.bias"]
    assert model.depthnet.weight.shape == (118 + 80, 256, 1, 1)
    assert model.nx.tolist() == [256, 256, 1]
    assert model.dx.tolist() == pytest.approx([0.4, 0.4, 20.0])
    assert model.bx.tolist() == pytest.approx([-51.0, -51.0, 0.0])
    downsample = [(k, list(v.shape)) for k, v in model.state_dict().items() if k.startswith("downsample.")]
    assert downsample == [(k, v) for k, v in REFERENCE if k.startswith("downsample.")]


def test_geometry_of_a_forward_camera_without_augmentation():
    """Pixel (u, v) at depth d of a camera at t looking along +x is
    t + (d, -d (u - cx) / f, -d (v - cy) / f)."""
    model = DepthLSSTransform()
    trans = torch.tensor([1.5, 0.2, -0.3], dtype=torch.float64)
    fx, cx, cy = 400.0, 350.0, 130.0
    c2l = _homogeneous(LOOK_ALONG_X, trans).float().view(1, 1, 4, 4)
    k = _intrinsics(fx, cx, cy).float().view(1, 1, 4, 4)
    eye3 = torch.eye(3).view(1, 1, 3, 3)
    geom = model.get_geometry(c2l[..., :3, :3], c2l[..., :3, 3], k[..., :3, :3], eye3, torch.zeros(1, 1, 3))
    assert geom.shape == (1, 1, 118, 32, 88, 3) and geom.dtype == torch.float32
    for d_i, v_i, u_i in [(0, 0, 0), (117, 31, 87), (40, 16, 44), (7, 3, 70)]:
        u, v, d = model.frustum[d_i, v_i, u_i].double()
        expected = trans + torch.stack([d, -d * (u - cx) / fx, -d * (v - cy) / fx])
        torch.testing.assert_close(geom[0, 0, d_i, v_i, u_i].double(), expected, atol=1e-4, rtol=1e-5)
    # extra_rots / extra_trans (the LiDAR augmentation) act after the camera-to-LiDAR transform.
    aug = _lidar_aug().float()
    moved = model.get_geometry(
        c2l[..., :3, :3], c2l[..., :3, 3], k[..., :3, :3], eye3, torch.zeros(1, 1, 3), aug[None, :3, :3],
        aug[None, :3, 3],
    )  # fmt: skip
    torch.testing.assert_close(moved, geom @ aug[:3, :3].t() + aug[:3, 3], atol=1e-4, rtol=1e-5)


def test_geometry_round_trip_through_lidar2image():
    """Frustum point (u, v, d) of camera k -> get_geometry -> project with lidar2image, the image augmentation
    and the inverse LiDAR augmentation -> (u, v) and depth d again, for every camera of the rig."""
    model = DepthLSSTransform()
    metas = _rig(lidar_aug=_lidar_aug())
    metas["img_aug_matrix"][0, 2] = _img_aug(scale=0.5, crop=(40.0, 180.0), angle=0.08).float()
    geom = model.get_geometry(*_split_matrices(metas))
    assert geom.shape == (1, 6, 118, 32, 88, 3)
    frustum = model.frustum.reshape(-1, 3).double()
    for cam in range(6):
        uv, depth = _project(
            geom[0, cam].reshape(-1, 3), metas["lidar2image"][0, cam], metas["img_aug_matrix"][0, cam],
            metas["lidar_aug_matrix"][0],
        )  # fmt: skip
        torch.testing.assert_close(uv, frustum[:, :2], atol=2e-2, rtol=0)
        torch.testing.assert_close(depth, frustum[:, 2], atol=2e-3, rtol=1e-4)


def test_depth_image_puts_a_point_at_its_pixel_with_its_depth():
    model = DepthLSSTransform()
    metas = _rig(lidar_aug=_lidar_aug())
    # The point seen by the front camera at augmented pixel (u, v) = (300.4, 100.7), 12.5 m along its axis,
    # and one on the same ray twice as far (hidden behind it).
    u, v, d = 300.4, 100.7, 12.5
    aug = _img_aug().double()
    orig_u, orig_v = torch.linalg.solve(aug[:2, :2], torch.tensor([u, v], dtype=torch.float64) - aug[:2, 3])
    ray = torch.tensor([(orig_u - CX) / FX, (orig_v - CY) / FX, 1.0], dtype=torch.float64)
    camera0 = _lidar_aug() @ _homogeneous(LOOK_ALONG_X, (1.0, 0.0, -0.3))
    seen, hidden = (
        camera0 @ torch.cat([depth * ray, torch.ones(1, dtype=torch.float64)]) for depth in (d, 2 * d)
    )
    # On camera 0's optical axis but 31 m behind it, i.e. 29 m in front of camera 3 (looking backward).
    behind = _lidar_aug() @ torch.tensor([-30.0, 0.0, -0.3, 1.0], dtype=torch.float64)
    points = torch.stack([hidden, seen, behind])[:, :3].float()
    points = torch.cat([points, torch.rand(3, 2)], 1)  # intensity and time columns are ignored
    original = points.clone()
    depth = model.depth_image(
        [points], metas["lidar2image"], metas["img_aug_matrix"], metas["lidar_aug_matrix"]
    )
    assert depth.shape == (1, 6, 1, 256, 704)
    torch.testing.assert_close(points, original)
    assert depth[0, 0, 0, 100, 300].item() == pytest.approx(d, abs=1e-3)  # the nearer of the two
    assert torch.count_nonzero(depth[0, 0]) == 1
    nonzero = depth[0, 3, 0].nonzero()
    assert len(nonzero) == 1 and depth[0, 3, 0][tuple(nonzero[0])].item() == pytest.approx(29.0, abs=1e-3)
    assert torch.count_nonzero(depth[0, [1, 2, 4, 5]]) == 0


def test_depth_image_of_many_points_matches_an_independent_projection():
    torch.manual_seed(0)
    model = DepthLSSTransform()
    metas = _rig(batch_size=2, lidar_aug=_lidar_aug())
    metas["lidar_aug_matrix"][1] = torch.eye(4)
    clouds = [torch.randn(2000, 5) * torch.tensor([20.0, 20.0, 1.0, 1.0, 1.0]) for _ in range(2)]
    depth = model.depth_image(
        clouds, metas["lidar2image"], metas["img_aug_matrix"], metas["lidar_aug_matrix"]
    )
    for b in range(2):
        expected = torch.zeros(6, 256, 704, dtype=torch.float64)
        for cam in range(6):
            uv, dist = _project(
                clouds[b][:, :3], metas["lidar2image"][b, cam], metas["img_aug_matrix"][b, cam],
                metas["lidar_aug_matrix"][b],
            )  # fmt: skip
            on = (dist > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 704) & (uv[:, 1] >= 0) & (uv[:, 1] < 256)
            for (pu, pv), z in sorted(
                zip(uv[on].floor().long().tolist(), dist[on].tolist()), key=lambda t: -t[1]
            ):
                expected[cam, pv, pu] = z  # nearest written last
        assert torch.count_nonzero(expected) > 500
        torch.testing.assert_close(depth[b, :, 0].double(), expected, atol=1e-3, rtol=1e-5)


def _reference_lift_splat(model, depth, context, geom):
    """The release's bev_pool path: full (B, N, D, H, W, C) outer product, cells by .long(), filter, sum."""
    b, c = context.shape[0], context.shape[2]
    x = depth.unsqueeze(2) * context.unsqueeze(3)  # (B, N, C, D, H, W)
    x = x.permute(0, 1, 3, 4, 5, 2).reshape(-1, c)
    cells = ((geom - (model.bx - model.dx / 2.0)) / model.dx).long().view(-1, 3)
    batch = torch.arange(b).repeat_interleave(len(cells) // b)
    kept = ((cells >= 0) & (cells < model.nx)).all(1)
    coords = torch.cat([cells, batch[:, None]], 1)[kept]
    nz, nxx, ny = model.nx[2].item(), model.nx[0].item(), model.nx[1].item()
    out = torch.zeros(b, nz, nxx, ny, c, dtype=x.dtype)
    out = out.index_put((coords[:, 3], coords[:, 2], coords[:, 0], coords[:, 1]), x[kept], accumulate=True)
    return torch.cat(out.permute(0, 4, 1, 2, 3).unbind(dim=2), 1), kept


def test_lazy_outer_product_equals_the_release_formulation():
    """Small grid with two height bins, two samples with different LiDAR augmentations, values and
    gradients."""
    torch.manual_seed(0)
    model = LSSTransform(
        in_channels=8, out_channels=4, image_size=(64, 176), feature_size=(8, 22), xbound=(-20, 20, 1.0),
        ybound=(-20, 20, 1.0), zbound=(-3, 3, 3.0), dbound=(1, 30, 1.0), downsample=1,
    )  # fmt: skip
    metas = _rig(num_cameras=3, batch_size=2, lidar_aug=_lidar_aug())
    metas["lidar_aug_matrix"][1] = _lidar_aug(angle=-1.0, scale=0.95, trans=(-1.0, 0.5, 0.0)).float()
    metas["camera_intrinsics"][..., :2, :3] /= 4  # the small image is a 4x smaller camera
    metas["img_aug_matrix"][..., :2, 3] /= 4
    depth = torch.rand(2, 3, model.D, 8, 22, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 3, 4, 8, 22, dtype=torch.float64, requires_grad=True)
    plan = model.pooling_plan(
        metas["camera2lidar"], metas["camera_intrinsics"], metas["img_aug_matrix"], metas["lidar_aug_matrix"]
    )
    ours = model.pool_to_bev(depth, context, plan)
    geom = model.get_geometry(*_split_matrices(metas))
    theirs, kept = _reference_lift_splat(model, depth, context, geom)
    assert ours.shape == (2, 8, 40, 40) and ours.dtype == torch.float64
    assert 0 < kept.sum() < kept.numel()
    assert set(plan.coords[:, 3].tolist()) == {0, 1} and set(plan.coords[:, 2].tolist()) == {0, 1}
    torch.testing.assert_close(ours, theirs)
    weight = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * weight).sum(), (depth, context))
    expected = torch.autograd.grad((theirs * weight).sum(), (depth, context))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def test_pooling_plan_is_cached_by_the_matrices():
    model = DepthLSSTransform()
    assert model.plan_cache is not None
    # One cache class for the camera-to-BEV step: the view transform's and nn.BEVPool's.
    assert type(model.plan_cache) is type(BEVPool().cache) is BEVPoolCache
    model.plan_cache = BEVPoolCache()  # a fresh one, counting from zero
    metas = _rig(lidar_aug=_lidar_aug())
    args = [metas[n] for n in ("camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar_aug_matrix")]
    first = model.pooling_plan(*args)
    again = model.pooling_plan(*[a.clone() for a in args])
    assert again is first and (model.plan_cache.hits, model.plan_cache.misses) == (1, 1)
    args[3] = metas["lidar_aug_matrix"] @ _lidar_aug(angle=0.1).float()
    other = model.pooling_plan(*args)
    assert other is not first and model.plan_cache.misses == 2
    fresh = DepthLSSTransform(cache=False).pooling_plan(*args)
    assert (
        fresh.kept.equal(other.kept) and fresh.coords.equal(other.coords) and fresh.pixel.equal(other.pixel)
    )
    # Loading a checkpoint rewrites the grid in place, which invalidates the plan.
    model.load_state_dict(model.state_dict())
    assert model.pooling_plan(*args) is not other and model.plan_cache.misses == 3


def test_forward_six_cameras_gives_the_detection_bev_map():
    torch.manual_seed(0)
    model = DepthLSSTransform().eval()
    metas = _rig(lidar_aug=_lidar_aug(angle=0.1, scale=1.0, trans=(0.0, 0.0, 0.0)))
    img = torch.randn(1, 6, 256, 32, 88)
    points = [torch.randn(5000, 5) * torch.tensor([25.0, 25.0, 1.0, 1.0, 1.0])]
    with torch.no_grad():
        out = model(
            img, points, None, None, None, metas["lidar2image"], metas["camera_intrinsics"],
            metas["camera2lidar"], metas["img_aug_matrix"], metas["lidar_aug_matrix"], None,
        )  # fmt: skip
        assert out.shape == (1, 80, 180, 180) and torch.isfinite(out).all()
        # Before the downsampling: every camera fills the cells in its own viewing direction.
        depth, context = model.get_cam_feats(
            img,
            model.depth_image(
                points, metas["lidar2image"], metas["img_aug_matrix"], metas["lidar_aug_matrix"]
            ),
        )
        plan = model.pooling_plan(
            metas["camera2lidar"],
            metas["camera_intrinsics"],
            metas["img_aug_matrix"],
            metas["lidar_aug_matrix"],
        )
        bev = model.pool_to_bev(depth, context, plan)
    assert bev.shape == (1, 80, 360, 360)
    filled = bev.abs().sum(1)[0] > 0
    centres = torch.arange(360) * 0.3 - 53.85
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    radius, azimuth = torch.hypot(x, y), torch.atan2(y, x)
    for k in range(6):
        yaw = 2 * math.pi * k / 6 + 0.1  # camera yaw plus the LiDAR augmentation's rotation
        off = torch.remainder(azimuth - yaw + math.pi, 2 * math.pi) - math.pi
        # Depth bins 0.5 m apart on 0.3 m cells reach ~0.6 of the cells along a ray (every image row of a
        # column shares the ray's azimuth); rays ~0.76 degree apart leave no gaps sideways within 20 m.
        sector = (off.abs() < math.radians(10)) & (radius > 5) & (radius < 20)
        assert filled[sector].float().mean() > 0.5, k
    assert not filled[radius < 1.5].any()  # nothing closer than the 1 m depth bin can reach


def test_lss_forward_shape():
    torch.manual_seed(0)
    model = LSSTransform().eval()
    metas = _rig()
    with torch.no_grad():
        out = model(
            torch.randn(1, 6, 256, 32, 88), None, None, None, None, None, metas["camera_intrinsics"],
            metas["camera2lidar"], metas["img_aug_matrix"], metas["lidar_aug_matrix"],
        )  # fmt: skip
    assert out.shape == (1, 80, 128, 128) and torch.isfinite(out).all()


def test_bad_inputs_name_the_argument():
    model = DepthLSSTransform()
    metas = _rig()
    with pytest.raises(ValueError, match="img"):
        model(torch.randn(1, 6, 128, 32, 88), [torch.randn(10, 5)], None, None, None, metas["lidar2image"],
              metas["camera_intrinsics"], metas["camera2lidar"], metas["img_aug_matrix"])  # fmt: skip
    with pytest.raises(ValueError, match="camera_intrinsics"):
        model.pooling_plan(metas["camera2lidar"], metas["camera_intrinsics"][:, :3], metas["img_aug_matrix"])
    with pytest.raises(ValueError, match="points"):
        model.depth_image([], metas["lidar2image"], metas["img_aug_matrix"])
    with pytest.raises(ValueError, match="downsample"):
        DepthLSSTransform(downsample=4)
    assert isinstance(DepthLSSTransform(downsample=1).downsample, nn.Identity)
