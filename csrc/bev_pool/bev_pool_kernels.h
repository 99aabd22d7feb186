// Portable kernels of the bev_pool family: per-element bodies (TS_HOST_DEVICE functors of plain pointers) and the ops
// written once over a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA), so that the CPU suite runs
// the logic the GPU runs.
//
// The plan is ATen's stable sort of the ranks and the runs of equal rank (unique_consecutive): the plan of
// bev_pool_cpu.cpp exactly. Pooling gives every (interval, channel) to one body that sums the interval's points in
// `order`, accumulating half / bfloat16 in float: the CPU kernel's operations in its order, so equal bit for bit. The
// plan's structure is checked with reductions on its device (one host synchronisation, two for the backward pass).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>

#include "common/atomics.h"
#include "common/checks.h"
#include "common/coords.h"

namespace torchsparse {
namespace bev_pool {

// rank[i] of point i in a (B, Z, X, Y) grid, or num_cells (sorting after every cell) for a point outside it.
template <typename index_t>
struct RankBody {
  const index_t* coords;  // (N, 4) as (x, y, z, b)
  int64_t batch_size, nz, nx, ny, num_cells;
  int64_t* rank;  // (N,)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t x = coords[4 * i], y = coords[4 * i + 1], z = coords[4 * i + 2], b = coords[4 * i + 3];
    const bool inside = x >= 0 && x < nx && y >= 0 && y < ny && z >= 0 && z < nz && b >= 0 && b < batch_size;
    rank[i] = inside ? ((b * nz + z) * nx + x) * ny + y : num_cells;
  }
};

// Element (interval t, channel j) of bev_pool: the sum of feats[order[p], j] over the interval, in order.
template <typename scalar_t>
struct PoolBody {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* feats;  // (N, C)
  const int64_t* order;
  const int64_t* starts;
  const int64_t* lengths;
  const int64_t* cells;
  int64_t channels, plane;  // plane = Z * X * Y
  scalar_t* out;            // (B, C, Z, X, Y)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t t = i / channels, j = i - t * channels;
    acc_t acc = 0;
    for (int64_t p = starts[t], end = starts[t] + lengths[t]; p < end; ++p) {
      acc += static_cast<acc_t>(feats[order[p] * channels + j]);
    }
    const int64_t b = cells[t] / plane;
    out[(b * channels + j) * plane + (cells[t] - b * plane)] = static_cast<scalar_t>(acc);
  }
};

// Element (interval t, channel j) of bev_pool_backward: every point of the interval receives its cell's gradient.
// order holds distinct rows (checked), so every output element is written by one body.
template <typename scalar_t>
struct PoolBackwardBody {
  const scalar_t* grad;  // (B, C, Z, X, Y)
  const int64_t* order;
  const int64_t* starts;
  const int64_t* lengths;
  const int64_t* cells;
  int64_t channels, plane;
  scalar_t* out;  // (num_points, C), zero outside the intervals

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t t = i / channels, j = i - t * channels;
    const int64_t b = cells[t] / plane;
    const scalar_t value = grad[(b * channels + j) * plane + (cells[t] - b * plane)];
    for (int64_t p = starts[t], end = starts[t] + lengths[t]; p < end; ++p) out[order[p] * channels + j] = value;
  }
};

// seen[order[p]] += 1: how often each row appears in order (integer atomics, order-independent).
struct SeenBody {
  const int64_t* order;
  int32_t* seen;

  TS_HOST_DEVICE void operator()(int64_t p) const { atomic_add(&seen[order[p]], int32_t(1)); }
};

inline int64_t checked_cells(int64_t batch_size, int64_t z, int64_t x, int64_t y, const char* name) {
  uint64_t total = 1;
  for (int64_t v : {batch_size, z, x, y}) {
    TORCH_CHECK_VALUE(!c10::mul_overflows(total, static_cast<uint64_t>(v), &total) && total < (uint64_t(1) << 62),
                      name, " has too many cells to index with int64");
  }
  return static_cast<int64_t>(total);
}

inline void check_index_vector(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D int64, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", dtype_name(t));
}

inline void check_grid(int64_t batch_size, int64_t z, int64_t x, int64_t y) {
  TORCH_CHECK_VALUE(batch_size >= 1 && z >= 1 && x >= 1 && y >= 1, "B, Z, X and Y must be >= 1, got ", batch_size,
                    ", ", z, ", ", x, ", ", y);
}

// The checks of bev_pool_cpu.cpp's check_plan, as reductions on the plan's device (contiguous tensors): the intervals
// cut `order` into consecutive non-empty runs, the cells are strictly increasing in [0, num_cells), and order holds
// rows in [0, num_points). One host synchronisation when the plan is valid; the error path reads more to name the
// first bad interval.
inline void check_plan(const at::Tensor& order, const at::Tensor& starts, const at::Tensor& lengths,
                       const at::Tensor& cells, int64_t num_points, int64_t num_cells) {
  check_index_vector(order, "order");
  check_index_vector(starts, "starts");
  check_index_vector(lengths, "lengths");
  check_index_vector(cells, "cells");
  TORCH_CHECK_VALUE(lengths.size(0) == starts.size(0) && cells.size(0) == starts.size(0),
                    "starts, lengths and cells must have the same length, got ", starts.size(0), ", ",
                    lengths.size(0), " and ", cells.size(0));
  const int64_t m = order.size(0), intervals = starts.size(0);
  const auto opts = starts.options();
  // Clamped to [0, m] before any addition, so that garbage values cannot overflow; an interval whose values were
  // clamped fails `bad_run` anyway.
  const auto s = starts.clamp(0, m), l = lengths.clamp(0, m);
  const auto ends = s + l;
  const auto expected = at::cat({at::zeros({1}, opts), ends.narrow(0, 0, std::max<int64_t>(intervals - 1, 0))})
                            .narrow(0, 0, intervals);
  const auto bad_run = starts.ne(expected) | lengths.ne(l) | l.lt(1) | l.gt(m - s);
  const auto previous = at::cat({at::full({1}, -1, opts), cells.narrow(0, 0, std::max<int64_t>(intervals - 1, 0))})
                            .narrow(0, 0, intervals);
  const auto bad_cell = cells.le(previous) | cells.ge(num_cells);
  const auto end = intervals > 0 ? ends.narrow(0, intervals - 1, 1).sum() : at::zeros({}, opts);
  const auto bad = bad_run | bad_cell;
  // (any bad interval, first bad interval, end of the last interval, min order, max order): one copy to the host.
  const auto first_bad = intervals > 0 ? bad.to(at::kLong).argmax() : at::zeros({}, opts);
  const auto any_bad = intervals > 0 ? bad.any().to(at::kLong) : at::zeros({}, opts);
  const auto lo = m > 0 ? order.min() : at::zeros({}, opts);
  const auto hi = m > 0 ? order.max() : at::zeros({}, opts);
  const auto summary = at::stack({any_bad, first_bad, end, lo, hi}).cpu();
  const int64_t* v = summary.data_ptr<int64_t>();
  if (v[0]) {
    const int64_t i = v[1];
    TORCH_CHECK_VALUE(!bad_run[i].item<bool>(), "starts and lengths must cut order (length ", m,
                      ") into consecutive non-empty runs, got start ", starts[i].item<int64_t>(), " and length ",
                      lengths[i].item<int64_t>(), " at interval ", i);
    TORCH_CHECK_VALUE(false, "cells must be strictly increasing in [0, ", num_cells, "), got ",
                      cells[i].item<int64_t>(), " at interval ", i);
  }
  TORCH_CHECK_VALUE(v[2] == m, "starts and lengths must cover order (length ", m, "), they end at ", v[2]);
  TORCH_CHECK_INDEX(m == 0 || (v[3] >= 0 && v[4] < num_points), "order values must be in [0, ", num_points,
                    "), got [", v[3], ", ", v[4], "]");
}

// Checks bev_pool_plan's arguments; returns the number of cells of the (batch_size, Z, X, Y) grid.
inline int64_t checked_plan_args(const at::Tensor& coords, int64_t batch_size, at::IntArrayRef grid) {
  TORCH_CHECK_VALUE(coords.dim() == 2 && coords.size(1) == 4, "coords must be (N, 4) as (x, y, z, b), got shape ",
                    coords.sizes());
  TORCH_CHECK_TYPE(coords.scalar_type() == at::kInt || coords.scalar_type() == at::kLong,
                   "coords must be int32 or int64, got ", dtype_name(coords));
  TORCH_CHECK_VALUE(grid.size() == 3, "grid must be (Z, X, Y), got ", grid.size(), " values");
  TORCH_CHECK_VALUE(batch_size >= 1, "batch_size must be >= 1, got ", batch_size);
  TORCH_CHECK_VALUE(grid[0] >= 1 && grid[1] >= 1 && grid[2] >= 1, "grid values must be >= 1, got ", grid);
  return checked_cells(batch_size, grid[0], grid[1], grid[2], "grid");
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bev_pool_plan_with(const at::Tensor& coords,
                                                                              int64_t batch_size,
                                                                              at::IntArrayRef grid,
                                                                              const Launch& launch) {
  const int64_t num_cells = checked_plan_args(coords, batch_size, grid);
  const int64_t nz = grid[0], nx = grid[1], ny = grid[2];
  auto c = coords.contiguous();
  const int64_t n = c.size(0);
  auto rank = at::empty({n}, c.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(c.scalar_type(), "bev_pool_plan", [&] {
    launch(n, RankBody<index_t>{c.data_ptr<index_t>(), batch_size, nz, nx, ny, num_cells, rank.data_ptr<int64_t>()});
  });
  // Non-negative keys: ATen's CPU sort may use its parallel radix sort. Points outside the grid sort last.
  auto [sorted, perm] = at::sort(rank, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  // The number of kept points sizes the outputs: a host synchronisation on CUDA.
  const int64_t kept = at::searchsorted(sorted, at::full({}, num_cells, sorted.options())).item<int64_t>();
  auto order = perm.narrow(0, 0, kept);
  auto [cells, inverse, lengths] = at::unique_consecutive(sorted.narrow(0, 0, kept), false, true);
  auto starts = lengths.cumsum(0) - lengths;
  return {order, starts, lengths, cells};
}

template <typename Launch>
at::Tensor bev_pool_with(const at::Tensor& feats, const at::Tensor& order, const at::Tensor& starts,
                         const at::Tensor& lengths, const at::Tensor& cells, int64_t batch_size, int64_t nz,
                         int64_t nx, int64_t ny, const Launch& launch) {
  TORCH_CHECK_VALUE(feats.dim() == 2, "feats must be (N, C), got shape ", feats.sizes());
  check_floating(feats, "feats");
  check_grid(batch_size, nz, nx, ny);
  const int64_t num_cells = checked_cells(batch_size, nz, nx, ny, "(B, Z, X, Y)");
  check_same_device(
      {{&feats, "feats"}, {&order, "order"}, {&starts, "starts"}, {&lengths, "lengths"}, {&cells, "cells"}});
  auto f = feats.contiguous();
  auto ord = order.contiguous();
  auto st = starts.contiguous();
  auto len = lengths.contiguous();
  auto cl = cells.contiguous();
  check_plan(ord, st, len, cl, f.size(0), num_cells);
  const int64_t c = f.size(1), intervals = st.size(0);
  auto out = at::zeros({batch_size, c, nz, nx, ny}, f.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "bev_pool", [&] {
    launch(intervals * c, PoolBody<scalar_t>{f.data_ptr<scalar_t>(), ord.data_ptr<int64_t>(), st.data_ptr<int64_t>(),
                                             len.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), c, nz * nx * ny,
                                             out.data_ptr<scalar_t>()});
  });
  return out;
}

// Checks bev_pool_backward's grad_output and num_points; returns the number of cells of grad_output's grid.
inline int64_t checked_backward_args(const at::Tensor& grad_output, int64_t num_points) {
  TORCH_CHECK_VALUE(grad_output.dim() == 5, "grad_output must be (B, C, Z, X, Y), got shape ", grad_output.sizes());
  check_floating(grad_output, "grad_output");
  TORCH_CHECK_VALUE(num_points >= 0, "num_points must be >= 0, got ", num_points);
  const int64_t batch_size = grad_output.size(0), nz = grad_output.size(2);
  const int64_t nx = grad_output.size(3), ny = grad_output.size(4);
  check_grid(batch_size, nz, nx, ny);
  return checked_cells(batch_size, nz, nx, ny, "grad_output");
}

template <typename Launch>
at::Tensor bev_pool_backward_with(const at::Tensor& grad_output, const at::Tensor& order, const at::Tensor& starts,
                                  const at::Tensor& lengths, const at::Tensor& cells, int64_t num_points,
                                  const Launch& launch) {
  const int64_t num_cells = checked_backward_args(grad_output, num_points);
  const int64_t batch_size = grad_output.size(0), c = grad_output.size(1);
  const int64_t nz = grad_output.size(2), nx = grad_output.size(3), ny = grad_output.size(4);
  check_same_device({{&grad_output, "grad_output"}, {&order, "order"}, {&starts, "starts"}, {&lengths, "lengths"},
                     {&cells, "cells"}});
  auto g = grad_output.contiguous();
  auto ord = order.contiguous();
  auto st = starts.contiguous();
  auto len = lengths.contiguous();
  auto cl = cells.contiguous();
  // num_points through the ATen allocator: a huge num_points is a clean allocation error.
  auto seen = at::zeros({num_points}, g.options().dtype(at::kInt));
  check_plan(ord, st, len, cl, num_points, num_cells);
  // Every output element must be written by one body: order must hold distinct rows. Second synchronisation.
  launch(ord.size(0), SeenBody{ord.data_ptr<int64_t>(), seen.data_ptr<int32_t>()});
  if (ord.size(0) > 0) {
    const auto [most, row] = seen.max(0);
    const auto found = at::stack({most.to(at::kLong), row}).cpu();
    TORCH_CHECK_VALUE(found[0].item<int64_t>() <= 1, "order must hold distinct rows, got row ",
                      found[1].item<int64_t>(), " ", found[0].item<int64_t>(), " times");
  }
  const int64_t intervals = st.size(0);
  auto out = at::zeros({num_points, c}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bev_pool_backward", [&] {
    launch(intervals * c,
           PoolBackwardBody<scalar_t>{g.data_ptr<scalar_t>(), ord.data_ptr<int64_t>(), st.data_ptr<int64_t>(),
                                      len.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), c, nz * nx * ny,
                                      out.data_ptr<scalar_t>()});
  });
  return out;
}

}  // namespace bev_pool
}  // namespace torchsparse
