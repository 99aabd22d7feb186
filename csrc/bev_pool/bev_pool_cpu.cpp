// CPU kernels of the bev_pool family. The plan is a stable LSD radix sort of the kept points by cell (every pass a
// chunked counting sort whose chunks keep input order), so its output does not depend on the thread count. The
// pooling gives every interval, i.e. every output cell, to one thread, which sums the interval's points in order:
// deterministic and free of atomics; the backward pass writes every point row from the one interval holding it.
// The portable kernels of bev_pool_kernels.h (what the CUDA kernels run) are registered on the CPU as the
// bev_pool*_portable ops: slower here (ATen's sort, scalar per-channel bodies), equal bit for bit.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bev_pool/bev_pool_kernels.h"
#include "common/checks.h"
#include "common/launch.h"

namespace torchsparse {
namespace {

// Radix digits of at most 2^20 buckets: one pass covers grids up to ~1M cells (BEVFusion: 360 x 360 x 1).
constexpr int kMaxDigitBits = 20;
// Below this many points per thread the counting passes run on fewer chunks.
constexpr int64_t kMinChunk = 1 << 15;

using bev_pool::check_grid;
using bev_pool::check_index_vector;
using bev_pool::checked_cells;

// How many points ahead the pooling loop prefetches the feature rows it will read.
constexpr int64_t kPrefetch = 8;

void prefetch_row(const void* row, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* p = static_cast<const char*>(row);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset);
#endif
}

int bit_length(uint64_t v) {
  int bits = 0;
  for (; v; v >>= 1) ++bits;
  return bits;
}

// Stably sorts the positions j with key[j] >= 0 by key (keys < num_keys), returning the sorted positions and
// their keys. LSD radix sort; every pass is a counting sort over `chunks` contiguous ranges whose histograms are
// laid out digit-major, chunk-minor, so equal digits keep their input order whatever the number of chunks.
void stable_sort_by_key(const std::vector<int64_t>& key, int64_t num_keys, std::vector<int64_t>& rows,
                        std::vector<int64_t>& sorted_keys) {
  const int64_t n = static_cast<int64_t>(key.size());
  const int bits = std::max(1, bit_length(static_cast<uint64_t>(std::max<int64_t>(num_keys - 1, 0))));
  const int passes = (bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit_bits = (bits + passes - 1) / passes;
  const int64_t radix = int64_t(1) << digit_bits;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / kMinChunk));
  std::vector<int64_t> hist(chunks * radix);
  std::vector<int64_t> src_rows, src_keys;
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * digit_bits;
    const bool first = pass == 0;
    const int64_t len = first ? n : static_cast<int64_t>(src_keys.size());
    const int64_t* keys = first ? key.data() : src_keys.data();
    const int64_t chunk_len = (len + chunks - 1) / chunks;
    std::fill(hist.begin(), hist.end(), 0);
    at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        int64_t* h = hist.data() + c * radix;
        for (int64_t j = c * chunk_len, end = std::min(len, (c + 1) * chunk_len); j < end; ++j) {
          if (keys[j] >= 0) ++h[(keys[j] >> shift) & (radix - 1)];
        }
      }
    });
    int64_t total = 0;
    for (int64_t d = 0; d < radix; ++d) {
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t count = hist[c * radix + d];
        hist[c * radix + d] = total;
        total += count;
      }
    }
    rows.resize(total);
    sorted_keys.resize(total);
    at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        int64_t* h = hist.data() + c * radix;
        for (int64_t j = c * chunk_len, end = std::min(len, (c + 1) * chunk_len); j < end; ++j) {
          if (keys[j] < 0) continue;
          const int64_t at = h[(keys[j] >> shift) & (radix - 1)]++;
          rows[at] = first ? j : src_rows[j];
          sorted_keys[at] = keys[j];
        }
      }
    });
    if (pass + 1 < passes) {
      src_rows.swap(rows);
      src_keys.swap(sorted_keys);
    }
  }
}

at::Tensor to_tensor(const std::vector<int64_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

// Checks that the intervals cut `order` into consecutive non-empty runs, that the cells are strictly
// increasing inside [0, num_cells), and that `order` holds rows in [0, num_points). With rows_seen (num_points
// zeroed bytes) it also checks that no row appears twice (the backward pass writes each row from one thread) and
// marks the rows present.
void check_plan(const at::Tensor& order, const at::Tensor& starts, const at::Tensor& lengths,
                const at::Tensor& cells, int64_t num_points, int64_t num_cells,
                uint8_t* rows_seen = nullptr) {
  check_index_vector(order, "order");
  check_index_vector(starts, "starts");
  check_index_vector(lengths, "lengths");
  check_index_vector(cells, "cells");
  TORCH_CHECK_VALUE(lengths.size(0) == starts.size(0) && cells.size(0) == starts.size(0),
              "starts, lengths and cells must have the same length, got ", starts.size(0), ", ", lengths.size(0),
              " and ", cells.size(0));
  const int64_t m = order.size(0), intervals = starts.size(0);
  const int64_t* sp = starts.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  const int64_t* cp = cells.data_ptr<int64_t>();
  int64_t end = 0, cell = -1;
  for (int64_t i = 0; i < intervals; ++i) {
    TORCH_CHECK_VALUE(sp[i] == end && lp[i] >= 1 && lp[i] <= m - sp[i],
                "starts and lengths must cut order (length ", m, ") into consecutive non-empty runs, got start ",
                sp[i], " and length ", lp[i], " at interval ", i);
    TORCH_CHECK_VALUE(cp[i] > cell && cp[i] < num_cells, "cells must be strictly increasing in [0, ", num_cells,
                "), got ", cp[i], " at interval ", i);
    end = sp[i] + lp[i];
    cell = cp[i];
  }
  TORCH_CHECK_VALUE(end == m, "starts and lengths must cover order (length ", m, "), they end at ", end);
  const int64_t* op = order.data_ptr<int64_t>();
  for (int64_t j = 0; j < m; ++j) {
    TORCH_CHECK_INDEX(op[j] >= 0 && op[j] < num_points, "order values must be in [0, ", num_points, "), got ", op[j],
                " at position ", j);
    if (rows_seen) {
      TORCH_CHECK_VALUE(!rows_seen[op[j]], "order must hold distinct rows, got row ", op[j], " twice");
      rows_seen[op[j]] = 1;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bev_pool_plan_cpu(const at::Tensor& coords,
                                                                             int64_t batch_size,
                                                                             at::IntArrayRef grid) {
  const int64_t num_cells = bev_pool::checked_plan_args(coords, batch_size, grid);
  const int64_t nz = grid[0], nx = grid[1], ny = grid[2];
  auto c = coords.contiguous();
  const int64_t n = c.size(0);
  std::vector<int64_t> rank(n);
  AT_DISPATCH_INDEX_TYPES(c.scalar_type(), "bev_pool_plan", [&] {
    const index_t* p = c.data_ptr<index_t>();
    at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t x = p[4 * i], y = p[4 * i + 1], z = p[4 * i + 2], b = p[4 * i + 3];
        const bool inside = x >= 0 && x < nx && y >= 0 && y < ny && z >= 0 && z < nz && b >= 0 && b < batch_size;
        rank[i] = inside ? ((b * nz + z) * nx + x) * ny + y : -1;
      }
    });
  });
  std::vector<int64_t> order, sorted_rank;
  stable_sort_by_key(rank, num_cells, order, sorted_rank);
  std::vector<int64_t> starts, lengths, cells;
  const int64_t m = static_cast<int64_t>(order.size());
  for (int64_t j = 0; j < m; ++j) {
    if (j == 0 || sorted_rank[j] != sorted_rank[j - 1]) {
      if (!starts.empty()) lengths.push_back(j - starts.back());
      starts.push_back(j);
      cells.push_back(sorted_rank[j]);
    }
  }
  if (!starts.empty()) lengths.push_back(m - starts.back());
  return {to_tensor(order), to_tensor(starts), to_tensor(lengths), to_tensor(cells)};
}

at::Tensor bev_pool_cpu(const at::Tensor& feats, const at::Tensor& order, const at::Tensor& starts,
                        const at::Tensor& lengths, const at::Tensor& cells, int64_t batch_size, int64_t nz,
                        int64_t nx, int64_t ny) {
  TORCH_CHECK_VALUE(feats.dim() == 2, "feats must be (N, C), got shape ", feats.sizes());
  check_floating(feats, "feats");
  check_grid(batch_size, nz, nx, ny);
  const int64_t num_cells = checked_cells(batch_size, nz, nx, ny, "(B, Z, X, Y)");
  auto f = feats.contiguous();
  auto ord = order.contiguous();
  auto st = starts.contiguous();
  auto len = lengths.contiguous();
  auto cl = cells.contiguous();
  check_same_device({{&feats, "feats"}, {&order, "order"}, {&starts, "starts"}, {&lengths, "lengths"}, {&cells, "cells"}});
  check_plan(ord, st, len, cl, f.size(0), num_cells);
  const int64_t c = f.size(1), plane = nz * nx * ny, intervals = st.size(0), m = ord.size(0);
  auto out = at::zeros({batch_size, c, nz, nx, ny}, f.options());
  if (c == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "bev_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* fp = f.data_ptr<scalar_t>();
    const int64_t* op = ord.data_ptr<int64_t>();
    const int64_t* sp = st.data_ptr<int64_t>();
    const int64_t* lp = len.data_ptr<int64_t>();
    const int64_t* cp = cl.data_ptr<int64_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, intervals, 64, [&](int64_t lo, int64_t hi) {
      std::vector<acc_t> acc(c);
      for (int64_t i = lo; i < hi; ++i) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t p = sp[i], end = sp[i] + lp[i]; p < end; ++p) {
          // The rows are scattered over feats: fetch a few points ahead (into the next intervals too).
          if (p + kPrefetch < m) prefetch_row(fp + op[p + kPrefetch] * c, c * sizeof(scalar_t));
          const scalar_t* __restrict__ src = fp + op[p] * c;
          acc_t* __restrict__ dst = acc.data();
          for (int64_t j = 0; j < c; ++j) dst[j] += static_cast<acc_t>(src[j]);
        }
        const int64_t b = cp[i] / plane;
        scalar_t* dst = outp + b * c * plane + (cp[i] - b * plane);
        for (int64_t j = 0; j < c; ++j) dst[j * plane] = static_cast<scalar_t>(acc[j]);
      }
    });
  });
  return out;
}

at::Tensor bev_pool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& order, const at::Tensor& starts,
                                 const at::Tensor& lengths, const at::Tensor& cells, int64_t num_points) {
  const int64_t num_cells = bev_pool::checked_backward_args(grad_output, num_points);
  const int64_t batch_size = grad_output.size(0), c = grad_output.size(1);
  const int64_t nz = grad_output.size(2), nx = grad_output.size(3), ny = grad_output.size(4);
  auto g = grad_output.contiguous();
  auto ord = order.contiguous();
  auto st = starts.contiguous();
  auto len = lengths.contiguous();
  auto cl = cells.contiguous();
  // num_points bytes, zeroed, through the ATen allocator: a huge num_points is a clean allocation error.
  auto covered_t = at::zeros({num_points}, g.options().dtype(at::kByte));
  uint8_t* covered = covered_t.data_ptr<uint8_t>();
  check_same_device({{&grad_output, "grad_output"}, {&order, "order"}, {&starts, "starts"}, {&lengths, "lengths"},
                     {&cells, "cells"}});
  check_plan(ord, st, len, cl, num_points, num_cells, covered);
  const int64_t plane = nz * nx * ny, intervals = st.size(0);
  // Every row is written once, by its interval or as a zero row: no separate zero fill of the (N, C) result.
  auto out = at::empty({num_points, c}, g.options());
  if (c == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bev_pool_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* op = ord.data_ptr<int64_t>();
    const int64_t* sp = st.data_ptr<int64_t>();
    const int64_t* lp = len.data_ptr<int64_t>();
    const int64_t* cp = cl.data_ptr<int64_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, intervals, 64, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> cell_grad(c);
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t b = cp[i] / plane;
        const scalar_t* src = gp + b * c * plane + (cp[i] - b * plane);
        for (int64_t j = 0; j < c; ++j) cell_grad[j] = src[j * plane];
        for (int64_t p = sp[i], end = sp[i] + lp[i]; p < end; ++p) {
          std::copy(cell_grad.begin(), cell_grad.end(), outp + op[p] * c);
        }
      }
    });
    at::parallel_for(0, num_points, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        if (!covered[r]) std::fill(outp + r * c, outp + (r + 1) * c, scalar_t(0));
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("bev_pool_plan", &bev_pool_plan_cpu);
  m.impl("bev_pool", &bev_pool_cpu);
  m.impl("bev_pool_backward", &bev_pool_backward_cpu);
  m.impl("bev_pool_plan_portable", [](const at::Tensor& coords, int64_t batch_size, at::IntArrayRef grid) {
    return bev_pool::bev_pool_plan_with(coords, batch_size, grid, CpuLauncher{1 << 14});
  });
  m.impl("bev_pool_portable", [](const at::Tensor& feats, const at::Tensor& order, const at::Tensor& starts,
                                 const at::Tensor& lengths, const at::Tensor& cells, int64_t batch_size, int64_t nz,
                                 int64_t nx, int64_t ny) {
    return bev_pool::bev_pool_with(feats, order, starts, lengths, cells, batch_size, nz, nx, ny, CpuLauncher{4096});
  });
  m.impl("bev_pool_backward_portable", [](const at::Tensor& grad_output, const at::Tensor& order,
                                          const at::Tensor& starts, const at::Tensor& lengths,
                                          const at::Tensor& cells, int64_t num_points) {
    return bev_pool::bev_pool_backward_with(grad_output, order, starts, lengths, cells, num_points, CpuLauncher{4096});
  });
}

}  // namespace torchsparse
