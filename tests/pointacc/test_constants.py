"""The simulator imports no torch, so it keeps copies of the engine's constants: the packable coordinate range
(pointacc.workload and the core's key packing, csrc/pointacc/core.cpp) and the kernel offset order
(pointacc.units.mapping.kernel_offsets). These tests pin each copy equal to the engine's single definition
(torchsparse._C, read from csrc/common/)."""

import itertools

import numpy as np
import pytest

from pointacc import _core, workload
from pointacc.units.mapping import kernel_offsets


def test_packable_range_equals_the_engine():
    from torchsparse import _C

    engine = (_C.BATCH_MAX, _C.COORD_MIN, _C.COORD_MAX)
    assert (workload.BATCH_MAX, workload.COORD_MIN, workload.COORD_MAX) == engine
    centre = kernel_offsets((1, 1, 1))
    corners = np.array(
        [[_C.BATCH_MAX, _C.COORD_MAX, _C.COORD_MIN, 0], [0, _C.COORD_MIN, _C.COORD_MAX, 0]], np.int32
    )
    in_rows, out_rows, sizes, _ = _core.kernel_map(corners, corners, centre, (1, 1, 1))  # packs the corners
    assert sizes.tolist() == [2] and sorted(in_rows.tolist()) == sorted(out_rows.tolist()) == [0, 1]
    for column, beyond in [(0, _C.BATCH_MAX + 1), (1, _C.COORD_MAX + 1), (2, _C.COORD_MIN - 1), (0, -1)]:
        outside = corners.astype(np.int64)
        outside[0, column] = beyond
        with pytest.raises(ValueError, match="out of the packable range"):
            _core.kernel_map(outside.astype(np.int32), corners, centre, (1, 1, 1))


@pytest.mark.parametrize(
    "kernel_size", [(1, 1, 1), (2, 2, 2), (3, 3, 3), (5, 5, 5), (1, 1, 3), (3, 1, 3), (2, 3, 2), (4, 2, 1)]
)
@pytest.mark.parametrize("dilation", [(1, 1, 1), (2, 1, 3)])
def test_kernel_offset_order_equals_the_engine(kernel_size, dilation):
    from torchsparse.conv_output import centred_base
    from torchsparse.ops import kernel_indices

    base = centred_base(kernel_size, dilation) if np.prod(kernel_size) % 2 else (0, 0, 0)
    engine = [tuple(b + i * d for b, i, d in zip(base, index, dilation)) for index in kernel_indices(kernel_size)]
    assert [tuple(row) for row in kernel_offsets(kernel_size, dilation).tolist()] == engine
    assert len(set(engine)) == len(list(itertools.product(*map(range, kernel_size))))
