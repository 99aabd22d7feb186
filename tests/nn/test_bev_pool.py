import pytest
import torch

from torchsparse.nn import BEVPoolCache
from torchsparse.nn.functional.bev_pool import bev_pool
from torchsparse.nn.modules.bev_pool import BEVPool
from torchsparse.ops.bev_pool import BEVPoolPlan, bev_pool_apply, bev_pool_plan
from torchsparse.ops.bev_pool import bev_pool as ops_bev_pool
from torchsparse.testing.bev_pool_references import frustum_bev_coords, random_bev_points, reference_bev_pool

GRID = (1, 360, 360)


def _frustum(device, batch_size=2):
    # A thinned frustum (4 x 11 features, 15 depths per camera) keeps the test fast; the geometry is BEVFusion's.
    coords, batch_size, grid = frustum_bev_coords(
        batch_size, feature_size=(4, 11), depth_bound=(1.0, 60.0, 4.0)
    )
    feats = torch.randn(len(coords), 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return feats.to(device), coords.to(device), batch_size, grid


def test_module_matches_oracle_and_caches_by_key(device):
    feats, coords, batch_size, grid = _frustum(device)
    pool = BEVPool()
    camera = torch.eye(4, device=device).repeat(6, 1, 1)
    out = pool(feats, coords, batch_size, grid, key=(camera,))
    assert torch.equal(out, reference_bev_pool(feats, coords, batch_size, grid).to(device))
    assert (pool.cache.hits, pool.cache.misses) == (0, 1)
    for _ in range(2):
        new_feats = torch.randn_like(feats)
        again = pool(new_feats, coords, batch_size, grid, key=(camera.clone(),))
        assert torch.equal(again, reference_bev_pool(new_feats, coords, batch_size, grid))
    assert (pool.cache.hits, pool.cache.misses) == (2, 1)
    moved = camera.clone()
    moved[0, 0, 3] = 0.5  # a recalibrated camera
    pool(feats, coords, batch_size, grid, key=(moved,))
    assert (pool.cache.hits, pool.cache.misses) == (2, 2)


def test_cached_and_uncached_forward_and_backward_are_bitwise_equal(device):
    feats, coords, batch_size, grid = _frustum(device)
    key = (torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(1)).to(device),)
    pool = BEVPool()
    pool(feats, coords, batch_size, grid, key=key)  # fills the cache
    cached_feats = feats.float().requires_grad_()
    fresh_feats = feats.float().requires_grad_()
    cached = pool(cached_feats, coords, batch_size, grid, key=key)
    fresh = BEVPool()(fresh_feats, coords, batch_size, grid)
    assert pool.cache.hits == 1
    assert torch.equal(cached, fresh)
    grad = torch.randn_like(cached)
    cached.backward(grad)
    fresh.backward(grad)
    assert torch.equal(cached_feats.grad, fresh_feats.grad)


def test_geometry_function_runs_only_on_a_miss(device):
    feats, coords, batch_size, grid = _frustum(device, batch_size=1)
    calls = []

    def geometry():
        calls.append(None)
        return coords

    pool = BEVPool()
    key = (torch.ones(3, device=device),)
    first = pool(feats, geometry, batch_size, grid, key=key)
    second = pool(feats, geometry, batch_size, grid, key=key)
    assert len(calls) == 1 and torch.equal(first, second)
    pool(feats, geometry, batch_size, grid)  # no key: no cache, the geometry runs
    assert len(calls) == 2 and (pool.cache.hits, pool.cache.misses) == (1, 1)


def test_functional_with_and_without_cache(device):
    feats, coords, batch_size, grid = _frustum(device, batch_size=1)
    cache = BEVPoolCache()
    key = (torch.zeros(2, 2, device=device),)
    with_cache = [bev_pool(feats, coords, batch_size, grid, cache=cache, key=key) for _ in range(2)]
    assert (cache.hits, cache.misses) == (1, 1)
    without = bev_pool(feats, coords, batch_size, grid)
    assert torch.equal(with_cache[0], without) and torch.equal(with_cache[1], without)
    bev_pool(feats, coords, batch_size, grid, cache=cache)  # a cache without a key is not consulted
    assert (cache.hits, cache.misses) == (1, 1)


def test_module_has_no_state(device):
    pool = BEVPool().to(device)
    assert pool.state_dict() == {} and list(pool.parameters()) == []
    feats, coords, batch_size, grid = _frustum(device, batch_size=1)
    out = pool(feats.float(), coords, batch_size, grid, key=())
    assert out.shape == (1, 8, *GRID) and out.dtype == torch.float32


# The cache itself (moved here from tests/ops with BEVPoolCache, which the ops layer no longer holds).
def _key(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 4, 4, generator=g).to(device), torch.randn(4, 4, generator=g).to(device))


def test_cache_hits_misses_and_invalidation(device):
    _, coords = random_bev_points(device, n=500, channels=4)
    cache = BEVPoolCache()
    key = _key(device)
    first = cache.plan(coords, 2, (2, 5, 4), key)
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.plan(coords, 2, (2, 5, 4), tuple(k.clone() for k in key)) is first
    assert (cache.hits, cache.misses) == (1, 1)
    changed = (key[0].clone(), key[1].clone())
    changed[1][0, 0] += 1e-6
    cache.plan(coords, 2, (2, 5, 4), changed)
    assert (cache.hits, cache.misses) == (1, 2)
    # In-place changes to the caller's tensors are noticed: the cache holds a copy.
    changed[1][0, 0] -= 1e-6
    cache.plan(coords, 2, (2, 5, 4), changed)
    assert (cache.hits, cache.misses) == (1, 3)
    other_key_variants = [
        (changed[0].double(), changed[1]),  # same values, other dtype
        (changed[0].reshape(3, 8, 4), changed[1]),  # same values, other shape
        (changed[0],),  # fewer tensors
    ]
    for variant in other_key_variants:
        cache.plan(coords, 2, (2, 5, 4), variant)
        cache.plan(coords, 2, (2, 5, 4), changed)
    assert (cache.hits, cache.misses) == (1, 9)
    cache.plan(coords, 2, (2, 5, 4), changed)
    assert (cache.hits, cache.misses) == (2, 9)
    cache.plan(coords, 3, (2, 5, 4), changed)  # batch size
    cache.plan(coords, 3, (2, 4, 5), changed)  # grid
    cache.plan(coords[:-1], 3, (2, 4, 5), changed)  # number of points
    assert (cache.hits, cache.misses) == (2, 12)
    cache.clear()
    cache.plan(coords[:-1], 3, (2, 4, 5), changed)
    assert (cache.hits, cache.misses) == (2, 13)
    with pytest.raises(TypeError, match="key must be a sequence of tensors"):
        cache.plan(coords, 2, (2, 5, 4), key[0])


def test_cached_plan_pools_bitwise_like_a_recomputed_one(device):
    feats, coords = random_bev_points(device, n=5000, channels=8, dtype=torch.float32)
    cache = BEVPoolCache()
    key = _key(device)
    calls = []

    def geometry():
        calls.append(1)
        return coords

    cache.plan(geometry, 2, (2, 5, 4), key)
    cached = cache.plan(geometry, 2, (2, 5, 4), key)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert isinstance(cached, BEVPoolPlan)
    fresh = bev_pool_plan(coords, 2, (2, 5, 4))
    assert all(torch.equal(a, b) for a, b in zip(cached[:4], fresh[:4]))
    for _ in range(3):
        new_feats = torch.randn_like(feats)
        assert torch.equal(bev_pool_apply(new_feats, cached), ops_bev_pool(new_feats, coords, 2, (2, 5, 4)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_sums_in_float32(dtype, device):
    feats, coords, batch_size, grid = _frustum(device)
    low = feats.to(dtype)
    out = bev_pool(low, coords, batch_size, grid)
    # One rounding of the float32 sum of the rounded features (the kernels would round after every addition).
    expected = reference_bev_pool(low.double(), coords, batch_size, grid).float().to(dtype)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps  # summing in the low dtype is off by many of its epsilons on dense cells
    torch.testing.assert_close(out.float().cpu(), expected.float().cpu(), rtol=eps, atol=eps)
