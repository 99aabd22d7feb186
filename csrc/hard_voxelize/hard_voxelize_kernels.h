// Portable hard_voxelize: per-element bodies (TS_HOST_DEVICE functors of plain pointers) and the op written once over
// a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA), so that the CPU suite runs the GPU's logic.
//
// The serial first-come numbering of hard_voxelize_cpu.cpp, without a serial loop: a stable sort of the points'
// voxel keys groups every voxel's points in input order (a run of equal keys), so a run's first entry is the voxel's
// first point and a point's offset in its run is its position in the voxel. Sorting the runs by first point numbers
// the voxels as the CPU kernel does; the caps are then per-run tests. Every output element is written once: no
// atomics, the result equals the CPU kernel's exactly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>

#include "common/atomics.h"
#include "common/checks.h"
#include "common/coords.h"

namespace torchsparse {
namespace hard_voxelize {

// key[i] = (cx * GY + cy) * GZ + cz of point i's voxel, or num_cells (sorting after every voxel) when it lies outside
// the grid. Same arithmetic as hard_voxelize_cpu, including where it stops: an axis after the first one outside the
// grid is not examined, so its NaN is not reported.
template <typename scalar_t>
struct KeyBody {
  const scalar_t* points;  // (N, F) contiguous
  int64_t features;        // F
  float size[3], low[3];
  int64_t grid[3];
  int64_t num_cells;
  int64_t* keys;     // (N,)
  int32_t* has_nan;  // raised for a NaN in an examined x, y, z column

  TS_HOST_DEVICE void operator()(int64_t i) const {
    using std::floor;
    using std::isnan;
    const scalar_t* r = points + i * features;
    int64_t c[3];
    for (int a = 0; a < 3; ++a) {
      if (isnan(r[a])) raise_flag(has_nan);
      const scalar_t q = floor((r[a] - static_cast<scalar_t>(low[a])) / static_cast<scalar_t>(size[a]));
      // NaN and +-inf fail the comparison: no integer cast of an out-of-range value.
      if (!(q >= 0 && q < static_cast<scalar_t>(grid[a]))) {
        keys[i] = num_cells;
        return;
      }
      c[a] = static_cast<int64_t>(q);
    }
    keys[i] = (c[0] * grid[1] + c[1]) * grid[2] + c[2];
  }
};

// voxel_of_run[run_by_voxel[v]] = v: the inverse of the permutation that orders runs by their first point.
struct InverseBody {
  const int64_t* run_by_voxel;  // (R,)
  int64_t* voxel_of_run;        // (R,)

  TS_HOST_DEVICE void operator()(int64_t v) const { voxel_of_run[run_by_voxel[v]] = v; }
};

// Voxel v < M: its (x, y, z) from the key of its run, and its number of kept points.
struct VoxelBody {
  const int64_t* run_by_voxel;  // (R,)
  const int64_t* run_starts;    // (R + 1,) positions in the sorted keys, the last one = number of kept points
  const int64_t* sorted_keys;
  int64_t grid_y, grid_z, max_points;
  int32_t* coords;      // (M, 3)
  int32_t* num_points;  // (M,)

  TS_HOST_DEVICE void operator()(int64_t v) const {
    const int64_t run = run_by_voxel[v];
    const int64_t k = sorted_keys[run_starts[run]];
    coords[3 * v] = static_cast<int32_t>(k / (grid_y * grid_z));
    coords[3 * v + 1] = static_cast<int32_t>(k / grid_z % grid_y);
    coords[3 * v + 2] = static_cast<int32_t>(k % grid_z);
    const int64_t length = run_starts[run + 1] - run_starts[run];
    num_points[v] = static_cast<int32_t>(length < max_points ? length : max_points);
  }
};

// Element (s, col) of the copy: the point at sorted position s, if its voxel is kept (number < M) and it is among
// the voxel's first max_points points, goes to voxels[voxel, position, col].
template <typename scalar_t>
struct CopyBody {
  const scalar_t* points;        // (N, F)
  const int64_t* perm;           // (kept,) point of each sorted position
  const int64_t* run_of;         // (kept,) run of each sorted position
  const int64_t* run_starts;     // (R + 1,)
  const int64_t* voxel_of_run;   // (R,)
  int64_t features, max_points, num_voxels;
  scalar_t* voxels;  // (M, max_points, F)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t s = i / features, col = i - s * features;
    const int64_t run = run_of[s];
    const int64_t v = voxel_of_run[run], position = s - run_starts[run];
    if (v < num_voxels && position < max_points) {
      voxels[(v * max_points + position) * features + col] = points[perm[s] * features + col];
    }
  }
};

// The float32 voxel sizes and lower bounds and the voxels per axis, as mmdet3d computes them.
struct Grid {
  float size[3], low[3];
  int64_t cells[3];
};

// Checks every argument of hard_voxelize (both implementations) and returns its grid.
inline Grid checked_grid(const at::Tensor& points, at::ArrayRef<double> voxel_size, at::ArrayRef<double> point_range,
                         int64_t max_points, int64_t max_voxels) {
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) >= 3,
                    "points must be (N, F) with F >= 3 (x, y, z first), got shape ", points.sizes());
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   "points must be float32 or float64, got ", dtype_name(points));
  TORCH_CHECK_VALUE(voxel_size.size() == 3, "voxel_size must have 3 values (x, y, z), got ", voxel_size.size());
  TORCH_CHECK_VALUE(point_range.size() == 6,
                    "point_range must have 6 values (x_min, y_min, z_min, x_max, y_max, z_max), got ",
                    point_range.size());
  TORCH_CHECK_VALUE(max_points >= 1, "max_points must be >= 1, got ", max_points);
  TORCH_CHECK_VALUE(max_voxels >= 0, "max_voxels must be >= 0, got ", max_voxels);
  // The stride of a voxel in the (M, max_points, F) output must fit in int64 even when M is 0.
  checked_mul(max_points, points.size(1), "voxels (M * max_points * F)");
  // mmdet3d passes the sizes and the range as float32 and computes the grid size in float32.
  Grid g{};
  for (int a = 0; a < 3; ++a) {
    g.size[a] = static_cast<float>(voxel_size[a]);
    g.low[a] = static_cast<float>(point_range[a]);
    const float high = static_cast<float>(point_range[a + 3]);
    TORCH_CHECK_VALUE(std::isfinite(g.size[a]) && g.size[a] > 0, "voxel_size values must be finite and > 0, got ",
                      voxel_size);
    TORCH_CHECK_VALUE(std::isfinite(g.low[a]) && std::isfinite(high), "point_range values must be finite, got ",
                      point_range);
    const float cells = std::round((high - g.low[a]) / g.size[a]);
    TORCH_CHECK_VALUE(cells >= 1 && cells <= float(1 << 20),
                      "point_range and voxel_size must give 1 to 2^20 voxels per axis, got ", cells, " along axis ",
                      a);
    g.cells[a] = static_cast<int64_t>(cells);
  }
  return g;
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_voxelize_with(const at::Tensor& points,
                                                                  at::ArrayRef<double> voxel_size,
                                                                  at::ArrayRef<double> point_range,
                                                                  int64_t max_points, int64_t max_voxels,
                                                                  const Launch& launch) {
  const Grid grid = checked_grid(points, voxel_size, point_range, max_points, max_voxels);
  const int64_t num_cells = grid.cells[0] * grid.cells[1] * grid.cells[2];  // <= 2^60
  auto p = points.contiguous();
  const int64_t n = p.size(0), f = p.size(1);
  const auto long_opts = p.options().dtype(at::kLong);
  auto keys = at::empty({n}, long_opts);
  auto has_nan = at::zeros({}, p.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "hard_voxelize", [&] {
    launch(n, KeyBody<scalar_t>{p.data_ptr<scalar_t>(), f, {grid.size[0], grid.size[1], grid.size[2]},
                                {grid.low[0], grid.low[1], grid.low[2]},
                                {grid.cells[0], grid.cells[1], grid.cells[2]}, num_cells, keys.data_ptr<int64_t>(),
                                has_nan.data_ptr<int32_t>()});
  });
  // Host synchronisations on CUDA: this flag, and the sizes of the data-dependent outputs below.
  TORCH_CHECK_VALUE(has_nan.item<int32_t>() == 0, "points must not hold NaN in the x, y, z columns");
  // Stable: within a run of equal keys the points stay in input order. Points outside the grid sort last.
  auto [sorted_all, perm_all] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const int64_t kept = at::searchsorted(sorted_all, at::Scalar(num_cells)).item<int64_t>();
  auto sorted = sorted_all.narrow(0, 0, kept);
  auto perm = perm_all.narrow(0, 0, kept);
  // Runs of equal key: run_starts (R + 1,) with the end appended, run_of (kept,) the run of each position.
  auto counts = std::get<2>(at::unique_consecutive(sorted, false, true));
  const int64_t runs = counts.size(0);
  auto run_starts = at::zeros({runs + 1}, long_opts);
  run_starts.narrow(0, 1, runs).copy_(counts.cumsum(0));
  auto run_of = at::repeat_interleave(at::arange(runs, long_opts), counts, /*dim=*/0, /*output_size=*/kept);
  // A run's first entry is its voxel's first point; voxels are numbered in the order of their first points.
  auto first = perm.index_select(0, run_starts.narrow(0, 0, runs));
  auto run_by_voxel = std::get<1>(at::sort(first));  // first points are distinct: stability is irrelevant
  auto voxel_of_run = at::empty({runs}, long_opts);
  launch(runs, InverseBody{run_by_voxel.data_ptr<int64_t>(), voxel_of_run.data_ptr<int64_t>()});

  const int64_t m = std::min(runs, max_voxels);
  checked_mul(checked_mul(m, max_points, "voxels (M * max_points * F)"), f, "voxels (M * max_points * F)");
  auto voxels = at::zeros({m, max_points, f}, p.options());
  auto coords = at::empty({m, 3}, p.options().dtype(at::kInt));
  auto num_points = at::empty({m}, p.options().dtype(at::kInt));
  launch(m, VoxelBody{run_by_voxel.data_ptr<int64_t>(), run_starts.data_ptr<int64_t>(), sorted.data_ptr<int64_t>(),
                      grid.cells[1], grid.cells[2], max_points, coords.data_ptr<int32_t>(),
                      num_points.data_ptr<int32_t>()});
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "hard_voxelize_copy", [&] {
    launch(kept * f, CopyBody<scalar_t>{p.data_ptr<scalar_t>(), perm.data_ptr<int64_t>(), run_of.data_ptr<int64_t>(),
                                        run_starts.data_ptr<int64_t>(), voxel_of_run.data_ptr<int64_t>(), f,
                                        max_points, m, voxels.data_ptr<scalar_t>()});
  });
  return {voxels, coords, num_points};
}

}  // namespace hard_voxelize
}  // namespace torchsparse
