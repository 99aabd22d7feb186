// CPU kernels of the point-voxel family. Scatters first group their inputs by output row (a stable counting
// sort), so that every output row is summed by one thread in input order: deterministic for any thread count
// and free of atomics. point_voxel_query is the portable body of point_voxel_kernels.h; the other ops are also
// registered as *_portable ops running the CUDA kernels' bodies (slower on the CPU than these vectorised row loops,
// see bench_point_voxel.py), which the tests compare bit for bit against these.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "common/launch.h"
#include "point_voxel/point_voxel_kernels.h"

namespace torchsparse {
namespace {

using point_voxel::check_devoxelize_args;
using point_voxel::check_float;
using point_voxel::check_index;
using point_voxel::checked_voxelize_args;
using point_voxel::VoxelizeArgs;

// Groups the positions of idx by value with a stable counting sort: the positions holding value v are
// order[offsets[v] .. offsets[v + 1]), ascending. Negative entries are skipped. Lets each output row be summed by
// one thread, in input order: deterministic without atomics.
struct Groups {
  at::Tensor offsets, order;  // int64 (num_values + 1,) and (entries,), allocated through ATen
};

Groups group_by_index(const int64_t* idx, int64_t length, int64_t num_values) {
  Groups g;
  // num_values comes from the caller: ATen allocates, so a huge value is a clean allocation error.
  TORCH_CHECK_VALUE(num_values < std::numeric_limits<int64_t>::max(), "too many voxels: ", num_values);
  g.offsets = at::zeros({num_values + 1}, at::kLong);
  int64_t* offsets = g.offsets.data_ptr<int64_t>();
  for (int64_t i = 0; i < length; ++i) {
    if (idx[i] >= 0) ++offsets[idx[i] + 1];
  }
  for (int64_t v = 0; v < num_values; ++v) offsets[v + 1] += offsets[v];
  g.order = at::empty({offsets[num_values]}, at::kLong);
  int64_t* order = g.order.data_ptr<int64_t>();
  auto next_t = g.offsets.narrow(0, 0, num_values).clone();
  int64_t* next = next_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < length; ++i) {
    if (idx[i] >= 0) order[next[idx[i]]++] = i;
  }
  return g;
}

}  // namespace

// The portable body is as fast as a dedicated CPU loop here (bench_point_voxel.py): one implementation for both.
std::tuple<at::Tensor, at::Tensor> point_voxel_query_cpu(const at::Tensor& points, const at::Tensor& table_keys,
                                                         const at::Tensor& table_values, at::IntArrayRef stride,
                                                         int64_t neighbours) {
  return point_voxel::point_voxel_query_with(points, table_keys, table_values, stride, neighbours, CpuLauncher{2048});
}

at::Tensor point_voxel_count_cpu(const at::Tensor& idx, int64_t num_voxels) {
  check_index(idx, "idx", 1);
  TORCH_CHECK_VALUE(num_voxels >= 0, "num_voxels must be >= 0, got ", num_voxels);
  auto ix = checked_index(idx, "idx", -1, num_voxels);
  auto counts = at::zeros({num_voxels}, ix.options());
  const int64_t* ip = ix.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  for (int64_t i = 0, n = ix.size(0); i < n; ++i) {
    if (ip[i] >= 0) ++cp[ip[i]];
  }
  return counts;
}

at::Tensor voxelize_cpu(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& counts) {
  const VoxelizeArgs args = checked_voxelize_args(feats, idx, counts);
  const at::Tensor &f = args.feats, &ix = args.idx, &cnt = args.counts;
  const int64_t m = cnt.size(0);
  const int64_t n = f.size(0), c = f.size(1);
  auto out = at::zeros({m, c}, f.options());
  const Groups groups = group_by_index(ix.data_ptr<int64_t>(), n, m);
  const int64_t* offsets = groups.offsets.data_ptr<int64_t>();
  const int64_t* order = groups.order.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "voxelize", [&] {
    const scalar_t* fp = f.data_ptr<scalar_t>();
    const int64_t* cp = cnt.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, m, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t v = lo; v < hi; ++v) {
        if (cp[v] <= 0) continue;
        scalar_t* __restrict__ dst = op + v * c;
        for (int64_t p = offsets[v]; p < offsets[v + 1]; ++p) {
          const scalar_t* __restrict__ src = fp + order[p] * c;
          for (int64_t j = 0; j < c; ++j) dst[j] += src[j];
        }
        const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(cp[v]);
        for (int64_t j = 0; j < c; ++j) dst[j] *= scale;
      }
    });
  });
  return out;
}

at::Tensor devoxelize_cpu(const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& weights) {
  check_devoxelize_args(feats, idx, weights, "feats");
  auto ix = checked_index(idx, "idx", -1, feats.size(0));
  auto f = feats.contiguous();
  auto w = weights.contiguous();
  const int64_t n = ix.size(0), k = ix.size(1), c = f.size(1);
  auto out = at::zeros({n, c}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "devoxelize", [&] {
    const scalar_t* fp = f.data_ptr<scalar_t>();
    const int64_t* ip = ix.data_ptr<int64_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        scalar_t* dst = op + i * c;
        for (int64_t t = 0; t < k; ++t) {
          const int64_t row = ip[i * k + t];
          if (row < 0) continue;
          const scalar_t wt = wp[i * k + t];
          const scalar_t* src = fp + row * c;
          for (int64_t j = 0; j < c; ++j) dst[j] += wt * src[j];
        }
      }
    });
  });
  return out;
}

at::Tensor devoxelize_backward_cpu(const at::Tensor& grad_output, const at::Tensor& idx, const at::Tensor& weights,
                                   int64_t num_voxels) {
  check_devoxelize_args(grad_output, idx, weights, "grad_output");
  TORCH_CHECK_VALUE(grad_output.size(0) == idx.size(0), "grad_output must have one row per row of idx (",
                    idx.size(0), "), got ", grad_output.size(0));
  TORCH_CHECK_VALUE(num_voxels >= 0, "num_voxels must be >= 0, got ", num_voxels);
  auto ix = checked_index(idx, "idx", -1, num_voxels);
  auto g = grad_output.contiguous();
  auto w = weights.contiguous();
  const int64_t n = ix.size(0), k = ix.size(1), c = g.size(1);
  auto out = at::zeros({num_voxels, c}, g.options());
  const Groups groups = group_by_index(ix.data_ptr<int64_t>(), n * k, num_voxels);  // entries (n, k) by voxel
  const int64_t* offsets = groups.offsets.data_ptr<int64_t>();
  const int64_t* order = groups.order.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "devoxelize_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_voxels, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t v = lo; v < hi; ++v) {
        scalar_t* __restrict__ dst = op + v * c;
        for (int64_t p = offsets[v]; p < offsets[v + 1]; ++p) {
          const int64_t entry = order[p];
          const scalar_t wt = wp[entry];
          const scalar_t* __restrict__ src = gp + (entry / k) * c;
          for (int64_t j = 0; j < c; ++j) dst[j] += wt * src[j];
        }
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("point_voxel_query", &point_voxel_query_cpu);
  m.impl("point_voxel_count", &point_voxel_count_cpu);
  m.impl("voxelize", &voxelize_cpu);
  m.impl("devoxelize", &devoxelize_cpu);
  m.impl("devoxelize_backward", &devoxelize_backward_cpu);
  m.impl("point_voxel_count_portable", [](const at::Tensor& idx, int64_t num_voxels) {
    return point_voxel::point_voxel_count_with(idx, num_voxels, CpuLauncher{1 << 14});
  });
  m.impl("voxelize_portable", [](const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& counts) {
    return point_voxel::voxelize_with(feats, idx, counts, CpuLauncher{4096});
  });
  m.impl("devoxelize_portable", [](const at::Tensor& feats, const at::Tensor& idx, const at::Tensor& weights) {
    return point_voxel::devoxelize_with(feats, idx, weights, CpuLauncher{4096});
  });
  m.impl("devoxelize_backward_portable", [](const at::Tensor& grad_output, const at::Tensor& idx,
                                            const at::Tensor& weights, int64_t num_voxels) {
    return point_voxel::devoxelize_backward_with(grad_output, idx, weights, num_voxels, CpuLauncher{4096});
  });
}

}  // namespace torchsparse
