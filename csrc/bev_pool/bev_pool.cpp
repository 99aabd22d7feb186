// Schemas of the bev_pool family (BEVFusion's camera-to-BEV pooling): a plan that sorts camera-frustum points by
// their BEV cell and cuts the sorted order into intervals of equal cell, and the interval reduction that sums
// each interval's features into its cell.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // coords int32/int64 (N, 4) as (x, y, z, b); grid (Z, X, Y). Points with any of 0 <= x < X, 0 <= y < Y,
  // 0 <= z < Z, 0 <= b < batch_size violated are dropped. rank = ((b * Z + z) * X + x) * Y + y, the flat index
  // of the cell in a (batch_size, Z, X, Y) grid. Returns int64 tensors: order (M,) the kept rows sorted by rank,
  // stably (rows of equal rank stay in input order); starts (I,) and lengths (I,) >= 1 the runs of equal rank
  // in `order`, ascending and covering it; cells (I,) the rank of each run, strictly increasing.
  m.def("bev_pool_plan(Tensor coords, int batch_size, int[] grid) -> (Tensor order, Tensor starts, "
        "Tensor lengths, Tensor cells)");
  // feats float (N, C); order, starts, lengths, cells int64 as returned by bev_pool_plan (order holds distinct
  // rows of feats, cut by starts/lengths into consecutive runs; cells strictly increasing flat cells of a
  // (B, Z, X, Y) grid; all checked) -> (B, C, Z, X, Y) of feats' dtype:
  // every cell of an interval holds the sum of its points' features, in `order` (accumulated in float for
  // half/bfloat16), every other cell zero. One thread per range of intervals: deterministic, no atomics.
  m.def("bev_pool(Tensor feats, Tensor order, Tensor starts, Tensor lengths, Tensor cells, int B, int Z, int X, "
        "int Y) -> Tensor");
  // Gradient of bev_pool with respect to feats: grad_output (B, C, Z, X, Y) -> (num_points, C), each point of an
  // interval receives its cell's gradient (a gather); points outside every interval receive zero.
  m.def("bev_pool_backward(Tensor grad_output, Tensor order, Tensor starts, Tensor lengths, Tensor cells, "
        "SymInt num_points) -> Tensor");
  // The portable kernels of bev_pool_kernels.h (the bodies the CUDA kernels run), on the CPU too: same schemas and
  // results as the ops above (the same plan, bit-equal sums), for tests and benchmarks.
  m.def("bev_pool_plan_portable(Tensor coords, int batch_size, int[] grid) -> (Tensor order, Tensor starts, "
        "Tensor lengths, Tensor cells)");
  m.def("bev_pool_portable(Tensor feats, Tensor order, Tensor starts, Tensor lengths, Tensor cells, int B, int Z, "
        "int X, int Y) -> Tensor");
  m.def("bev_pool_backward_portable(Tensor grad_output, Tensor order, Tensor starts, Tensor lengths, Tensor cells, "
        "SymInt num_points) -> Tensor");
}
