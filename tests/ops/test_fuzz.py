"""Fuzzes every registered torchsparse:: op with adversarial arguments.

Each case builds valid arguments for one op from a seed, then applies up to three mutations to them (wrong
dtype, wrong shape, non-contiguous view, empty, meta device, a corrupted index, an aliased argument, a
negative / huge / overflowing scalar). The op must either raise a clean ValueError / TypeError / IndexError
(MemoryError, or torch's own refusal, for an output larger than memory), or return a result that equals the
reference (for value-preserving mutations, the result of the unmutated call).
A crash kills the test process and a hang is stopped by faulthandler's watchdog: both fail the run.

Run with ``--hypothesis-show-statistics`` for the number of cases per op.
"""

import faulthandler

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchsparse import ops
from torchsparse.testing import references as ref

T = torch.ops.torchsparse
CLEAN = (ValueError, TypeError, IndexError, MemoryError)
# torch's own clean refusals: meta tensors through an op whose output shape depends on the data, and an output
# larger than memory or than int64 bytes (a grid of 2^62 cells asked for by the caller).
TORCH_REFUSALS = (
    "Meta Tensors don't support operators with outputs that have data-dependent shapes",
    "DefaultCPUAllocator: can't allocate memory",
    "Storage size calculation overflowed",
)
HUGE = (2**40 + 3, 2**62, 2**63 - 1, -1, -(2**31), -(2**63))  # sizes either refused or too large to allocate
HANG_SECONDS = 20


def _coords(g: torch.Generator, n: int, span: int = 4, batches: int = 2) -> torch.Tensor:
    """int32 (m <= n, 4) unique coordinates (batch, x, y, z) in [0, batches) x [-span, span]^3, sorted."""
    c = torch.randint(-span, span + 1, (n, 4), generator=g, dtype=torch.int32)
    c[:, 0] = torch.randint(0, batches, (n,), generator=g, dtype=torch.int32)
    return torch.unique(c, dim=0)


def _index(coords):
    keys, rows = torch.sort(T.pack_coords(coords))
    return keys, rows


def _pairs(coords):
    keys, rows = _index(coords)
    nbmap = T.kernel_map(keys, rows, coords, [3, 3, 3], [1, 1, 1], [1, 1, 1], [-1, -1, -1], False)
    return nbmap, *T.kernel_map_pairs(nbmap)


def _valid(op: str, g: torch.Generator) -> list:
    """Valid arguments of `op` (small tensors, float64 features)."""
    if op.endswith("_portable"):  # a portable kernel takes the arguments of the op it mirrors
        return _valid(op.removesuffix("_portable"), g)
    n = int(torch.randint(1, 24, (1,), generator=g))
    c = _coords(g, n)
    m = c.shape[0]
    feats = torch.randn(m, 3, generator=g, dtype=torch.float64)
    if op == "pack_coords":
        return [c]
    if op == "unpack_coords":
        return [T.pack_coords(c)]
    if op == "hash_build":
        return [T.pack_coords(c)]
    if op == "hash_query":
        table_keys, table_values, _ = T.hash_build(T.pack_coords(c))
        return [table_keys, table_values, T.pack_coords(_coords(g, n))]
    if op == "kernel_map":
        keys, rows = _index(c)
        return [
            keys,
            rows,
            c,
            [3, 3, 3],
            [1, 1, 1],
            [1, 1, 1],
            [-1, -1, -1],
            bool(torch.rand(1, generator=g) < 0.5),
        ]
    if op == "kernel_map_pairs":
        return [_pairs(c)[0]]
    if op == "strided_coords":
        return [c, [2, 3, 2], [2, 2, 1], [1, 1, 2], [0, -1, 0], None if n % 2 else [4, 4, 4]]
    if op == "generative_coords":
        return [c, [2, 2, 3], [2, 2, 1], [1, 1, 1], [0, 0, -1]]
    if op in ("conv3d", "conv3d_fused"):
        nbmap, in_rows, out_rows, sizes = _pairs(c)
        weight = torch.randn(27, 3, 2, generator=g, dtype=torch.float64)
        if op == "conv3d":
            return [feats, weight, in_rows, out_rows, sizes, m]
        if n % 3 == 0:  # float16 with float16 products (on CPUs with AVX512-FP16)
            return [feats.half(), weight.half(), nbmap, in_rows, out_rows, sizes, 1 + n % 5, None, None, False, True]
        return [feats, weight, nbmap, in_rows, out_rows, sizes, 1 + n % 5]
    if op == "implicit_gemm":
        nbmap = _pairs(c)[0][:, 9:18].contiguous()  # 9 of the 27 offsets keep Triton's interpreter fast
        split = 1 + n % 4
        orders = ops.implicit_gemm_orders(nbmap, split) if n % 2 else None
        return [feats, torch.randn(9, 3, 2, generator=g, dtype=torch.float64), nbmap, orders, split]
    if op == "conv3d_weight_grad":
        _, in_rows, out_rows, sizes = _pairs(c)
        return [feats, torch.randn(m, 2, generator=g, dtype=torch.float64), in_rows, out_rows, sizes]
    grouping = [(0.0, 0.1, 0.5, 1.0)[n % 4], (0, 4, 1 << 16)[n % 3]]
    if op == "conv3d_grouped":
        _, in_rows, out_rows, sizes = _pairs(c)
        return [feats, torch.randn(27, 3, 2, generator=g, dtype=torch.float64), in_rows, out_rows, sizes, m, *grouping]
    if op == "conv3d_weight_grad_grouped":
        _, in_rows, out_rows, sizes = _pairs(c)
        return [feats, torch.randn(m, 2, generator=g, dtype=torch.float64), in_rows, out_rows, sizes, *grouping]
    points = torch.cat([c[:, :1].double(), torch.rand(m, 3, generator=g, dtype=torch.float64) * 8 - 4], 1)
    if op == "point_voxel_query":
        table_keys, table_values, _ = T.hash_build(T.pack_coords(c))
        return [points, table_keys, table_values, [1, 1, 1], 8 if n % 2 else 1]
    idx = torch.randint(-1, m, (m,), generator=g)
    if op == "point_voxel_count":
        return [idx, m]
    if op == "voxelize":
        return [feats, idx, T.point_voxel_count(idx, m)]
    idx8 = torch.randint(-1, m, (m, 8), generator=g)
    weights = torch.rand(m, 8, generator=g, dtype=torch.float64)
    if op == "devoxelize":
        return [feats, idx8, weights]
    if op == "devoxelize_backward":
        return [feats, idx8, weights, m]
    bev = torch.randint(-1, 4, (m, 4), generator=g)
    if op == "bev_pool_plan":
        return [bev, 2, [2, 3, 3]]
    plan = list(T.bev_pool_plan(bev, 2, [2, 3, 3]))
    if op == "bev_pool":
        return [feats, *plan, 2, 2, 3, 3]
    if op == "bev_pool_backward":
        return [torch.randn(2, 3, 2, 3, 3, generator=g, dtype=torch.float64), *plan, m]
    if op == "hard_voxelize":
        return [points[:, 1:], [1.0, 1.0, 2.0], [-4.0, -4.0, -4.0, 4.0, 4.0, 4.0], 1 + n % 3, m]
    raise AssertionError(op)


OPS = [
    "pack_coords",
    "unpack_coords",
    "hash_build",
    "hash_query",
    "kernel_map",
    "kernel_map_pairs",
    "strided_coords",
    "generative_coords",
    "conv3d",
    "conv3d_fused",
    "conv3d_weight_grad",
    "conv3d_grouped",
    "conv3d_weight_grad_grouped",
    "point_voxel_query",
    "point_voxel_count",
    "voxelize",
    "devoxelize",
    "devoxelize_backward",
    "bev_pool_plan",
    "bev_pool",
    "bev_pool_backward",
    "hard_voxelize",
    "point_voxel_count_portable",
    "voxelize_portable",
    "devoxelize_portable",
    "devoxelize_backward_portable",
    "bev_pool_plan_portable",
    "bev_pool_portable",
    "bev_pool_backward_portable",
    "hard_voxelize_portable",
    # Triton (torchsparse/ops/triton/), registered when triton is installed; CPU tensors under its interpreter
    *(["implicit_gemm"] if ops.HAS_TRITON else []),
]


def test_every_registered_op_is_fuzzed():
    registered = {
        name.split("::")[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("torchsparse::")
    }
    # Python-defined validation ops (torchsparse::check_*) hold no C++ kernel and read tensors through torch only.
    kernels = {name for name in registered if not name.startswith("check_")}
    assert kernels == set(OPS)


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """A view with the values of t whose memory is not contiguous (every other element of a larger buffer)."""
    if t.dim() == 0 or t.numel() == 0 or t.device.type == "meta":
        return t
    wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), 7, dtype=t.dtype)
    if t.is_floating_point():
        wide.fill_(float("nan"))
    view = wide[..., ::2]
    view.copy_(t)
    return view


MUTATIONS = ["noncontiguous", "transposed", "dtype", "shape", "empty", "meta", "corrupt", "alias", "scalar"]
PRESERVING = {"noncontiguous"}


def _mutate(args: list, kind: str, position: int, value: int, g: torch.Generator) -> list:
    args = list(args)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    others = [i for i, a in enumerate(args) if not isinstance(a, torch.Tensor) and a is not None]
    if kind == "scalar":
        if not others:
            return args
        i = others[position % len(others)]
        if isinstance(args[i], list):
            j = value % len(args[i])
            args[i] = list(args[i])
            args[i][j] = HUGE[value % len(HUGE)] if value % 3 else -value
            if value % 7 == 0:
                args[i] = args[i][:2]
        elif isinstance(args[i], bool):
            args[i] = not args[i]
        else:
            args[i] = HUGE[value % len(HUGE)] if value % 3 else -value
        return args
    if not tensors:
        return args
    i = tensors[position % len(tensors)]
    t = args[i]
    if kind == "noncontiguous":
        args[i] = _noncontiguous(t)
    elif kind == "transposed":
        args[i] = t.t() if t.dim() == 2 else t.flip(0)
    elif kind == "dtype":
        choices = [
            torch.int32,
            torch.int64,
            torch.float32,
            torch.float64,
            torch.float16,
            torch.uint8,
            torch.bool,
        ]
        args[i] = t.to(choices[value % len(choices)])
    elif kind == "shape":
        args[i] = (
            t.reshape(-1) if t.dim() > 1 else t.reshape(-1, 1) if value % 2 else t[: max(t.shape[0] - 1, 0)]
        )
    elif kind == "empty":
        args[i] = t[:0]
    elif kind == "meta":
        args[i] = t.to("meta")
    elif kind == "corrupt" and t.numel():
        t = t.clone(memory_format=torch.contiguous_format)
        flat = t.view(-1)
        pos = int(torch.randint(0, flat.numel(), (1,), generator=g))
        if t.is_floating_point():
            flat[pos] = (float("nan"), float("inf"), -1e30, 1e30, -0.5)[value % 5]
        elif t.dtype == torch.int32:
            flat[pos] = (-(2**31), -2, -1, 2**31 - 1, t.numel(), 1 << 20)[value % 6]
        elif t.dtype == torch.int64:
            flat[pos] = (-(2**63), -2, -1, 2**63 - 1, t.numel(), 1 << 40)[value % 6]
        args[i] = t
    elif kind == "alias":
        same = [j for j in tensors if j != i and args[j].dtype == t.dtype]
        if same:
            args[i] = args[same[value % len(same)]]
    return args


def _close(actual, expected, tol):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, equal_nan=True)


def _check_against_reference(op: str, args: list, out) -> None:
    """Where a simple reference defines the op for any accepted input, the result must equal it."""
    op = op.removesuffix("_portable")  # a portable kernel has the reference of the op it mirrors
    if op == "conv3d":
        expected = ref.reference_conv3d(*args)
        _close(out.double(), expected, 1e-2)
    elif op == "conv3d_weight_grad":
        _close(out.double(), ref.reference_conv3d_weight_grad(*args), 1e-2)
    elif op == "conv3d_grouped":
        _close(out.double(), ref.reference_conv3d(*args[:6]), 1e-2)
    elif op == "conv3d_weight_grad_grouped":
        _close(out.double(), ref.reference_conv3d_weight_grad(*args[:5]), 1e-2)
    elif op == "implicit_gemm":
        _close(out.double(), ref.reference_conv3d_fused(*args[:3]), 1e-2)
    elif op == "conv3d_fused":  # computed from the pairs (nbmap is only checked)
        feats, weight, nbmap, in_rows, out_rows, sizes = args[:6]
        expected = ref.reference_conv3d(feats.double(), weight.double(), in_rows, out_rows, sizes, nbmap.shape[0])
        if len(args) > 9 and args[9]:  # relu (a mutation may set it)
            expected = torch.where(expected < 0, 0.0, expected)
        _close(out.double(), expected, 1e-2)
    elif op == "voxelize":
        _close(out, ref.reference_voxelize(*args), 1e-6)
    elif op == "devoxelize":
        _close(out, ref.reference_devoxelize(*args), 1e-6)
    elif op == "point_voxel_count":
        idx, num = args
        assert out.tolist() == [int((idx == v).sum()) for v in range(num)]
    elif op == "hash_query":
        table = dict(zip(args[0].tolist(), args[1].tolist()))
        table.pop(-1, None)
        expected = [table.get(q, -1) if q >= 0 else -1 for q in args[2].tolist()]
        # A hand-made table may place keys where probing from their home slot never reaches them: a miss is
        # then the right answer too.
        assert all(o in (e, -1) for o, e in zip(out.tolist(), expected))


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num())


def _call(op: str, args: list):
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        return getattr(T, op)(*args)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    mutations=st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 7), st.integers(0, 1000)), min_size=0, max_size=3
    ),
)
def test_fuzz(op, seed, mutations):
    if op == "implicit_gemm" and not ops.triton.interpreted():
        pytest.skip("Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1, set without a GPU)")
    g = torch.Generator().manual_seed(seed)
    valid = _valid(op, g)
    baseline = _call(op, valid)
    _check_against_reference(op, valid, baseline)
    args = valid
    for kind, position, value in mutations:
        args = _mutate(args, kind, position, value, g)
    try:
        out = _call(op, args)
    except CLEAN:
        return
    except RuntimeError as error:
        if any(reason in str(error) for reason in TORCH_REFUSALS):
            return
        raise
    if all(kind in PRESERVING for kind, _, _ in mutations):
        assert _equal(out, baseline), f"{op}: a value-preserving mutation changed the result"
    if not any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
        _check_against_reference(op, args, out)
