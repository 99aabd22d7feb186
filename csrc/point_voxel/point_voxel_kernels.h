// Portable kernels of the point-voxel family: per-element bodies (TS_HOST_DEVICE functors of plain pointers) and the
// ops written once over a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA), so that the CPU
// suite runs the logic the GPU runs.
//
// Scatters are output-stationary: entries are grouped by output row with a stable sort (CSR offsets from
// searchsorted), then one body per (row, channel) sums its row's entries in input order. That is the order of the CPU
// kernels of point_voxel_cpu.cpp, so both devices give the CPU's result bit for bit, with no float atomics.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/atomics.h"
#include "common/checks.h"
#include "common/coords.h"
#include "common/hash_table.h"

namespace torchsparse {
namespace point_voxel {

// a * b rounded once and never fused with a neighbouring add: nvcc contracts a * b + c into an FMA by default, gcc
// without -mfma never does, and a fused multiply-add rounds differently. The _rn intrinsics are never contracted.
TS_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

TS_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// One point of point_voxel_query (schema in point_voxel.cpp): the row of each neighbour voxel and its weight.
// A point with NaN / inf or a batch that is not an integer in [0, kBatchMax] raises its flag; its outputs are then
// left unwritten, and the op fails.
template <typename scalar_t>
struct QueryBody {
  const scalar_t* points;  // (N, 4) contiguous
  HashTableView table;
  int64_t stride[3];
  int64_t neighbours;  // 1 or 8
  int64_t* idx;        // (N, neighbours)
  scalar_t* weights;   // (N, neighbours)
  int32_t* not_finite;
  int32_t* bad_batch;

  TS_HOST_DEVICE int64_t find(int64_t b, int64_t x, int64_t y, int64_t z) const {
    return coord_in_range(b, x, y, z) ? table.find(pack_coord(b, x, y, z)) : -1;
  }

  TS_HOST_DEVICE void operator()(int64_t i) const {
    using std::floor;
    using std::isfinite;
    const scalar_t* r = points + 4 * i;
    int64_t* row_idx = idx + neighbours * i;
    scalar_t* row_w = weights + neighbours * i;
    if (!isfinite(r[0]) || !isfinite(r[1]) || !isfinite(r[2]) || !isfinite(r[3])) {
      raise_flag(not_finite);
      return;
    }
    const int64_t b = static_cast<int64_t>(r[0]);
    if (static_cast<scalar_t>(b) != r[0] || b < 0 || b > kBatchMax) {
      raise_flag(bad_batch);
      return;
    }
    constexpr scalar_t kClamp = scalar_t(1 << 20);
    scalar_t frac[3];
    int64_t f[3];
    for (int a = 0; a < 3; ++a) {
      const scalar_t q = r[a + 1] / static_cast<scalar_t>(stride[a]);
      const scalar_t fl = floor(q);
      // Far outside the packable range: clamp before the integer cast; coord_in_range rejects it in find().
      f[a] = static_cast<int64_t>(fl < -kClamp ? -kClamp : fl > kClamp ? kClamp : fl);
      frac[a] = q - fl;
    }
    if (neighbours == 1) {
      row_idx[0] = find(b, f[0], f[1], f[2]);
      row_w[0] = row_idx[0] >= 0 ? scalar_t(1) : scalar_t(0);
      return;
    }
    // Neighbour k is f + (k >> 2 & 1, k >> 1 & 1, k & 1): x slowest, z fastest.
    scalar_t total = 0;
    for (int k = 0; k < 8; ++k) {
      const int d[3] = {(k >> 2) & 1, (k >> 1) & 1, k & 1};
      const int64_t row = find(b, f[0] + d[0], f[1] + d[1], f[2] + d[2]);
      scalar_t w = 1;
      for (int a = 0; a < 3; ++a) w = mul_rn(w, d[a] ? frac[a] : scalar_t(1) - frac[a]);
      row_idx[k] = row;
      row_w[k] = row >= 0 ? w : scalar_t(0);
      total += row_w[k];
    }
    const scalar_t denom = total + scalar_t(1e-8);
    for (int k = 0; k < 8; ++k) row_w[k] /= denom;
  }
};

// counts[idx[i]] += 1 for idx[i] >= 0. Integer atomics: the counts do not depend on the order of the additions.
struct CountBody {
  const int64_t* idx;
  int64_t* counts;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    if (idx[i] >= 0) atomic_add(&counts[idx[i]], int64_t(1));
  }
};

// Element (v, j) of voxelize: the sum of feature j over the entries of voxel v in input order, times 1 / counts[v];
// zero where counts[v] <= 0. Same operations in the same order as voxelize_cpu.
template <typename scalar_t>
struct VoxelizeBody {
  const scalar_t* feats;   // (N, C)
  const int64_t* offsets;  // (M + 1,) CSR of order
  const int64_t* order;    // entries (point rows) grouped by voxel, ascending within a voxel
  const int64_t* counts;   // (M,)
  int64_t channels;
  scalar_t* out;  // (M, C)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t v = i / channels, j = i - v * channels;
    scalar_t acc = 0;
    if (counts[v] > 0) {
      for (int64_t p = offsets[v]; p < offsets[v + 1]; ++p) acc += feats[order[p] * channels + j];
      acc *= scalar_t(1) / static_cast<scalar_t>(counts[v]);
    }
    out[i] = acc;
  }
};

// Element (n, j) of devoxelize: sum over k in order of weights[n, k] * feats[idx[n, k], j], absent (-1) skipped.
template <typename scalar_t>
struct DevoxelizeBody {
  const scalar_t* feats;    // (M, C)
  const int64_t* idx;       // (N, K)
  const scalar_t* weights;  // (N, K)
  int64_t neighbours;       // K
  int64_t channels;
  scalar_t* out;  // (N, C)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t n = i / channels, j = i - n * channels;
    scalar_t acc = 0;
    for (int64_t t = n * neighbours, end = t + neighbours; t < end; ++t) {
      const int64_t row = idx[t];
      if (row >= 0) acc += mul_rn(weights[t], feats[row * channels + j]);
    }
    out[i] = acc;
  }
};

// Element (v, j) of devoxelize_backward: sum over the entries e = (n, k) of voxel v, in input order, of
// weights[e] * grad_output[n, j].
template <typename scalar_t>
struct DevoxelizeBackwardBody {
  const scalar_t* grad;     // (N, C)
  const scalar_t* weights;  // (N * K,)
  const int64_t* offsets;   // (M + 1,)
  const int64_t* order;     // flat entries n * K + k grouped by voxel, ascending within a voxel
  int64_t neighbours;       // K
  int64_t channels;
  scalar_t* out;  // (M, C)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t v = i / channels, j = i - v * channels;
    scalar_t acc = 0;
    for (int64_t p = offsets[v]; p < offsets[v + 1]; ++p) {
      const int64_t e = order[p];
      acc += mul_rn(weights[e], grad[(e / neighbours) * channels + j]);
    }
    out[i] = acc;
  }
};

inline void check_index(const at::Tensor& idx, const char* name, int64_t dim) {
  check_dim(idx, name, dim, dim == 1 ? "1-D int64" : "2-D int64");
  check_dtype(idx, name, at::kLong);
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", dtype_name(t));
}

inline void check_devoxelize_args(const at::Tensor& values, const at::Tensor& idx, const at::Tensor& weights,
                                  const char* values_name) {
  check_dim(values, values_name, 2, "2-D");
  check_float(values, values_name);
  check_index(idx, "idx", 2);
  check_same_device({{&values, values_name}, {&idx, "idx"}, {&weights, "weights"}});
  TORCH_CHECK_VALUE(weights.sizes() == idx.sizes(), "weights must have the shape of idx ", idx.sizes(), ", got ",
                    weights.sizes());
  TORCH_CHECK_TYPE(weights.scalar_type() == values.scalar_type(), "weights must have the dtype of ", values_name,
                   " (", dtype_name(values), "), got ", dtype_name(weights));
}

// The entries of a checked index tensor (values in [-1, num_values)) grouped by value: the positions holding v are
// order[offsets[v] .. offsets[v + 1]), ascending (a stable sort); -1 entries sort first and belong to no group.
struct Groups {
  at::Tensor offsets;  // int64 (num_values + 1,)
  at::Tensor order;    // int64 (entries,)
};

inline Groups group_by_index(const at::Tensor& flat_idx, int64_t num_values) {
  // num_values may come from the caller: ATen allocates, so a huge value is a clean allocation error.
  TORCH_CHECK_VALUE(num_values < std::numeric_limits<int64_t>::max(), "too many voxels: ", num_values);
  auto [sorted, order] = at::sort(flat_idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto offsets = at::searchsorted(sorted, at::arange(num_values + 1, flat_idx.options()));
  return {offsets, order};
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> point_voxel_query_with(const at::Tensor& points, const at::Tensor& table_keys,
                                                          const at::Tensor& table_values, at::IntArrayRef stride,
                                                          int64_t neighbours, const Launch& launch) {
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 4,
                    "points must be (N, 4) as (batch, x, y, z), got shape ", points.sizes());
  check_float(points, "points");
  check_triple(stride, "stride", 1, kMaxGeometry);
  TORCH_CHECK_VALUE(neighbours == 1 || neighbours == 8, "neighbours must be 1 or 8, got ", neighbours);
  const HashTableView table = make_table_view(table_keys, table_values);
  check_same_device(points, "points", table_keys, "table_keys");
  auto p = points.contiguous();
  const int64_t n = p.size(0);
  auto idx = at::empty({n, neighbours}, p.options().dtype(at::kLong));
  auto weights = at::empty({n, neighbours}, p.options());
  auto flags = at::zeros({2}, p.options().dtype(at::kInt));  // not finite, bad batch
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "point_voxel_query", [&] {
    launch(n, QueryBody<scalar_t>{p.data_ptr<scalar_t>(), table, {stride[0], stride[1], stride[2]}, neighbours,
                                  idx.data_ptr<int64_t>(), weights.data_ptr<scalar_t>(), flags.data_ptr<int32_t>(),
                                  flags.data_ptr<int32_t>() + 1});
  });
  // The one host synchronisation of the op on CUDA.
  const auto raised = flags.cpu();
  TORCH_CHECK_VALUE(raised[0].item<int32_t>() == 0, "points contain NaN or inf");
  TORCH_CHECK_VALUE(raised[1].item<int32_t>() == 0, "points batch column must hold integers in [0, ", kBatchMax,
                    "]");
  return {idx, weights};
}

template <typename Launch>
at::Tensor point_voxel_count_with(const at::Tensor& idx, int64_t num_voxels, const Launch& launch) {
  check_index(idx, "idx", 1);
  TORCH_CHECK_VALUE(num_voxels >= 0, "num_voxels must be >= 0, got ", num_voxels);
  auto ix = checked_index(idx, "idx", -1, num_voxels);  // host synchronisation on CUDA (aminmax)
  auto counts = at::zeros({num_voxels}, ix.options());
  launch(ix.size(0), CountBody{ix.data_ptr<int64_t>(), counts.data_ptr<int64_t>()});
  return counts;
}

// voxelize's arguments, checked, as the contiguous tensors the kernels read.
struct VoxelizeArgs {
  at::Tensor feats, idx, counts;
};

inline VoxelizeArgs checked_voxelize_args(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& counts) {
  check_dim(feats, "feats", 2, "(N, C)");
  check_float(feats, "feats");
  check_index(idx, "idx", 1);
  check_index(counts, "counts", 1);
  check_same_device({{&feats, "feats"}, {&idx, "idx"}, {&counts, "counts"}});
  TORCH_CHECK_VALUE(idx.size(0) == feats.size(0), "idx must have one entry per row of feats (", feats.size(0),
                    "), got ", idx.size(0));
  VoxelizeArgs args{feats.contiguous(), checked_index(idx, "idx", -1, counts.size(0)), counts.contiguous()};
  // Both value checks read the device: two host synchronisations on CUDA.
  TORCH_CHECK_VALUE(counts.size(0) == 0 || args.counts.min().item<int64_t>() >= 0, "counts must be >= 0");
  return args;
}

template <typename Launch>
at::Tensor voxelize_with(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& counts,
                         const Launch& launch) {
  const VoxelizeArgs args = checked_voxelize_args(feats, idx, counts);
  const at::Tensor &f = args.feats, &ix = args.idx, &cnt = args.counts;
  const int64_t m = cnt.size(0);
  const int64_t c = f.size(1);
  auto out = at::empty({m, c}, f.options());
  const Groups groups = group_by_index(ix, m);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "voxelize", [&] {
    launch(m * c, VoxelizeBody<scalar_t>{f.data_ptr<scalar_t>(), groups.offsets.data_ptr<int64_t>(),
                                         groups.order.data_ptr<int64_t>(), cnt.data_ptr<int64_t>(), c,
                                         out.data_ptr<scalar_t>()});
  });
  return out;
}

template <typename Launch>
at::Tensor devoxelize_with(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& weights,
                           const Launch& launch) {
  check_devoxelize_args(feats, idx, weights, "feats");
  auto ix = checked_index(idx, "idx", -1, feats.size(0));  // host synchronisation on CUDA
  auto f = feats.contiguous();
  auto w = weights.contiguous();
  const int64_t n = ix.size(0), k = ix.size(1), c = f.size(1);
  auto out = at::empty({n, c}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "devoxelize", [&] {
    launch(n * c, DevoxelizeBody<scalar_t>{f.data_ptr<scalar_t>(), ix.data_ptr<int64_t>(), w.data_ptr<scalar_t>(), k,
                                           c, out.data_ptr<scalar_t>()});
  });
  return out;
}

template <typename Launch>
at::Tensor devoxelize_backward_with(const at::Tensor& grad_output, const at::Tensor& idx, const at::Tensor& weights,
                                    int64_t num_voxels, const Launch& launch) {
  check_devoxelize_args(grad_output, idx, weights, "grad_output");
  TORCH_CHECK_VALUE(grad_output.size(0) == idx.size(0), "grad_output must have one row per row of idx (",
                    idx.size(0), "), got ", grad_output.size(0));
  TORCH_CHECK_VALUE(num_voxels >= 0, "num_voxels must be >= 0, got ", num_voxels);
  auto ix = checked_index(idx, "idx", -1, num_voxels);  // host synchronisation on CUDA
  auto g = grad_output.contiguous();
  auto w = weights.contiguous();
  const int64_t k = ix.size(1), c = g.size(1);
  auto out = at::empty({num_voxels, c}, g.options());
  const Groups groups = group_by_index(ix.view(-1), num_voxels);  // entries n * K + k by voxel
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "devoxelize_backward", [&] {
    launch(num_voxels * c,
           DevoxelizeBackwardBody<scalar_t>{g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                            groups.offsets.data_ptr<int64_t>(), groups.order.data_ptr<int64_t>(), k, c,
                                            out.data_ptr<scalar_t>()});
  });
  return out;
}

}  // namespace point_voxel
}  // namespace torchsparse
