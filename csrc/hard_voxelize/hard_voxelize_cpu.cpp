// CPU kernel of hard_voxelize. Voxel indices are computed in parallel; slots are then assigned serially in input
// order through an open-addressing hash table (the grid of BEVFusion, 1440 x 1440 x 41 voxels, is too large for
// a dense lookup table), which makes the numbering and the caps deterministic; the copy into the voxel buffer is
// parallel again, every (voxel, position) written once. The portable formulation of hard_voxelize_kernels.h (what
// the CUDA kernel runs) is registered on the CPU as hard_voxelize_portable: about 2.4x slower here, as it sorts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/launch.h"
#include "hard_voxelize/hard_voxelize_kernels.h"

namespace torchsparse {
namespace {

// Linear-probing table from a voxel's linear index (>= 0) to its slot; capacity a power of two >= 2 * entries.
class VoxelTable {
 public:
  explicit VoxelTable(int64_t max_entries) {
    int64_t capacity = 16;
    while (capacity < 2 * max_entries) capacity <<= 1;
    keys_.assign(capacity, -1);
    slots_.resize(capacity);
    mask_ = capacity - 1;
  }

  // The slot of key, or -1 when absent; `at` receives the probe position where key is or would be stored.
  int64_t find(int64_t key, int64_t& at) const {
    uint64_t h = static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull;
    at = static_cast<int64_t>((h ^ (h >> 29)) & static_cast<uint64_t>(mask_));
    while (keys_[at] != -1 && keys_[at] != key) at = (at + 1) & mask_;
    return keys_[at] == key ? slots_[at] : -1;
  }

  void insert_at(int64_t at, int64_t key, int64_t slot) {
    keys_[at] = key;
    slots_[at] = slot;
  }

 private:
  std::vector<int64_t> keys_, slots_;
  int64_t mask_ = 0;
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_voxelize_cpu(const at::Tensor& points,
                                                                 at::ArrayRef<double> voxel_size,
                                                                 at::ArrayRef<double> point_range,
                                                                 int64_t max_points, int64_t max_voxels) {
  const hard_voxelize::Grid g = hard_voxelize::checked_grid(points, voxel_size, point_range, max_points, max_voxels);
  const int64_t* grid = g.cells;
  auto p = points.contiguous();
  const int64_t n = p.size(0), f = p.size(1);
  std::vector<int64_t> key(n);
  std::atomic<bool> has_nan{false};
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "hard_voxelize", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const scalar_t* r = pp + i * f;
        int64_t c[3];
        bool inside = true;
        for (int a = 0; a < 3; ++a) {
          if (std::isnan(r[a])) has_nan = true;
          const scalar_t q = std::floor((r[a] - static_cast<scalar_t>(g.low[a])) / static_cast<scalar_t>(g.size[a]));
          // NaN and +-inf fail the comparison: no integer cast of an out-of-range value.
          if (!(q >= 0 && q < static_cast<scalar_t>(grid[a]))) {
            inside = false;
            break;
          }
          c[a] = static_cast<int64_t>(q);
        }
        key[i] = inside ? (c[0] * grid[1] + c[1]) * grid[2] + c[2] : -1;
      }
    });
  });
  TORCH_CHECK_VALUE(!has_nan, "points must not hold NaN in the x, y, z columns");

  const int64_t valid = std::count_if(key.begin(), key.end(), [](int64_t k) { return k >= 0; });
  VoxelTable table(std::min(valid, max_voxels));
  std::vector<int64_t> slot(n, -1), position(n, 0), voxel_key;
  std::vector<int32_t> counts;
  for (int64_t i = 0; i < n; ++i) {
    if (key[i] < 0) continue;
    int64_t at;
    int64_t v = table.find(key[i], at);
    if (v < 0) {
      if (static_cast<int64_t>(voxel_key.size()) >= max_voxels) continue;
      v = static_cast<int64_t>(voxel_key.size());
      table.insert_at(at, key[i], v);
      voxel_key.push_back(key[i]);
      counts.push_back(0);
    }
    if (counts[v] < max_points) {
      slot[i] = v;
      position[i] = counts[v]++;
    }
  }

  const int64_t m = static_cast<int64_t>(voxel_key.size());
  checked_mul(checked_mul(m, max_points, "voxels (M * max_points * F)"), f, "voxels (M * max_points * F)");
  auto voxels = at::zeros({m, max_points, f}, p.options());
  auto coords = at::empty({m, 3}, p.options().dtype(at::kInt));
  auto num_points = at::empty({m}, p.options().dtype(at::kInt));
  int32_t* cp = coords.data_ptr<int32_t>();
  for (int64_t v = 0; v < m; ++v) {
    const int64_t k = voxel_key[v];
    cp[3 * v] = static_cast<int32_t>(k / (grid[1] * grid[2]));
    cp[3 * v + 1] = static_cast<int32_t>(k / grid[2] % grid[1]);
    cp[3 * v + 2] = static_cast<int32_t>(k % grid[2]);
  }
  std::copy(counts.begin(), counts.end(), num_points.data_ptr<int32_t>());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "hard_voxelize_copy", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* vp = voxels.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if (slot[i] < 0) continue;
        std::copy(pp + i * f, pp + (i + 1) * f, vp + (slot[i] * max_points + position[i]) * f);
      }
    });
  });
  return {voxels, coords, num_points};
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("hard_voxelize", &hard_voxelize_cpu);
  m.impl("hard_voxelize_portable", [](const at::Tensor& points, at::ArrayRef<double> voxel_size,
                                      at::ArrayRef<double> point_range, int64_t max_points, int64_t max_voxels) {
    return hard_voxelize::hard_voxelize_with(points, voxel_size, point_range, max_points, max_voxels,
                                             CpuLauncher{1 << 14});
  });
}

}  // namespace torchsparse
