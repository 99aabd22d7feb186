// CPU kernels of the kernel-map family, parallel over output sites with at::parallel_for (OpenMP).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "hashing/hashing_cpu.h"

namespace torchsparse {
namespace {

// First position in keys[lo, n) whose key is >= target, searching forward from lo by galloping: O(log gap).
inline int64_t gallop(const int64_t* keys, int64_t n, int64_t lo, int64_t target) {
  if (lo >= n || keys[lo] >= target) return lo;
  int64_t step = 1, prev = lo, next = lo + 1;
  while (next < n && keys[next] < target) {
    prev = next;
    step *= 2;
    next = prev + step;
  }
  return std::lower_bound(keys + prev + 1, keys + std::min(next, n), target) - keys;
}

// Sorted unique sites over (input site, kernel index) candidates, with the table linking them. Per axis,
// axis_sites(a, c, site, index) writes the candidate coordinates that input coordinate c yields along axis a and
// their kernel indices (at most kernel_size[a] of them) and returns their count; the candidates of an input site
// are the product of its axes' lists. Counting first and filling second keeps the buffers exact and their order
// independent of the thread count. Returns the sites and an int32 table: with by_site, (sites, K) holding the
// input row of (site, offset); otherwise (inputs, K) holding the site row of (input, offset); -1 elsewhere.
template <typename AxisSites>
std::tuple<at::Tensor, at::Tensor> unique_sites(const at::Tensor& coords, const KernelGeometry& g,
                                                AxisSites axis_sites, bool by_site) {
  auto c = coords.contiguous();
  const int64_t n = c.size(0), kv = g.volume();
  const int32_t* cp = c.data_ptr<int32_t>();
  // Per axis, an input coordinate yields at most kernel_size candidates.
  const int64_t width = std::max({g.size[0], g.size[1], g.size[2]});
  std::vector<int64_t> offsets(n + 1, 0);
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> sites(3 * width), index(3 * width);
    for (int64_t i = lo; i < hi; ++i) {
      int64_t count = 1;
      for (int a = 0; a < 3; ++a)
        count *= axis_sites(a, cp[4 * i + a + 1], &sites[a * width], &index[a * width]);  // <= kv
      offsets[i + 1] = count;
    }
  });
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(!c10::add_overflows(offsets[i + 1], offsets[i], &offsets[i + 1]),
                      "the number of candidate output sites overflows int64");
  const int64_t total = offsets[n];
  auto candidates = at::empty({total}, c.options().dtype(at::kLong));
  auto offset_of_t = at::empty({total}, c.options());
  int64_t* kp = candidates.data_ptr<int64_t>();
  int32_t* offset_of = offset_of_t.data_ptr<int32_t>();
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> sites(3 * width), index(3 * width);
    int64_t count[3];
    for (int64_t i = lo; i < hi; ++i) {
      const int32_t* r = cp + 4 * i;
      for (int a = 0; a < 3; ++a) count[a] = axis_sites(a, r[a + 1], &sites[a * width], &index[a * width]);
      const int64_t *sx = &sites[0], *sy = &sites[width], *sz = &sites[2 * width];
      const int64_t *ix = &index[0], *iy = &index[width], *iz = &index[2 * width];
      int64_t j = offsets[i];
      for (int64_t x = 0; x < count[0]; ++x)
        for (int64_t y = 0; y < count[1]; ++y)
          for (int64_t z = 0; z < count[2]; ++z, ++j) {
            const int64_t idx[3] = {ix[x], iy[y], iz[z]};
            kp[j] = pack_coord(r[0], sx[x], sy[y], sz[z]);
            offset_of[j] = static_cast<int32_t>(g.flat(idx));
          }
    }
  });
  const auto unique = at::_unique(candidates, /*sorted=*/true, /*return_inverse=*/true);
  const at::Tensor& keys = std::get<0>(unique);
  const at::Tensor& inverse = std::get<1>(unique);
  const int64_t m = keys.size(0);
  auto nbmap = at::full({by_site ? m : n, kv}, -1, c.options());
  int32_t* np = nbmap.data_ptr<int32_t>();
  const int64_t* inv = inverse.data_ptr<int64_t>();
  // Distinct candidates of one input differ in their offset, and distinct inputs reaching one site at one
  // offset would be equal coordinates: every entry is written at most once.
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
        if (by_site)
          np[inv[j] * kv + offset_of[j]] = static_cast<int32_t>(i);
        else
          np[i * kv + offset_of[j]] = static_cast<int32_t>(inv[j]);
      }
  });
  return {unpack_coords_cpu(keys), nbmap};
}

// First position >= pos whose key is >= target: a branch-free count over the next 8 keys covers the short gaps
// of a merge, galloping covers the rest.
inline int64_t advance(const int64_t* keys, int64_t n, int64_t pos, int64_t target) {
  if (pos + 8 <= n) {
    int64_t below = 0;
    for (int i = 0; i < 8; ++i) below += keys[pos + i] < target;
    if (below < 8) return pos + below;
    pos += 8;
  }
  return gallop(keys, n, pos, target);
}

}  // namespace

// Each (output, offset) query is the output's packed key shifted by that offset, so for outputs in sorted
// order the queries of one offset are sorted too: a merge that walks the sorted input keys forward finds
// them all, reading memory sequentially instead of probing a hash table at random. Unsorted outputs fall
// back to a binary search per query and stay correct.
at::Tensor kernel_map_cpu(const at::Tensor& sorted_keys, const at::Tensor& sorted_rows, const at::Tensor& out_coords,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                          at::IntArrayRef base, bool symmetric) {
  check_keys(sorted_keys, "sorted_keys");
  check_keys(sorted_rows, "sorted_rows");
  check_coords(out_coords, "out_coords");
  check_same_device({{&sorted_keys, "sorted_keys"}, {&sorted_rows, "sorted_rows"}, {&out_coords, "out_coords"}});
  TORCH_CHECK_VALUE(sorted_keys.size(0) == sorted_rows.size(0), "sorted_keys and sorted_rows must have the same "
                    "length, got ", sorted_keys.size(0), " and ", sorted_rows.size(0));
  const KernelGeometry g = make_geometry(kernel_size, stride, dilation, base);
  const int64_t n = sorted_keys.size(0), m = out_coords.size(0), kv = g.volume();
  // The rows are written into the map (and, when symmetric, used as its row indices): they index the n inputs.
  auto rows_t = checked_index(sorted_rows, "sorted_rows", 0, n);
  auto keys_t = sorted_keys.contiguous();
  auto oc = out_coords.contiguous();
  auto nbmap = at::empty({m, kv}, oc.options());
  const int64_t* keys = keys_t.data_ptr<int64_t>();
  const int64_t* rows = rows_t.data_ptr<int64_t>();
  const int32_t* cp = oc.data_ptr<int32_t>();
  int32_t* np = nbmap.data_ptr<int32_t>();
  std::vector<int64_t> delta(3 * kv);
  for (int64_t k = 0; k < kv; ++k) {
    int64_t idx[3];
    g.index(k, idx);
    for (int a = 0; a < 3; ++a) delta[3 * k + a] = g.base[a] + idx[a] * g.dilation[a];
  }
  // The merge needs ascending keys; equal keys would be duplicate coordinates.
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK_VALUE(keys[i - 1] < keys[i], "sorted_keys must be strictly ascending (sorted keys of unique "
                      "coordinates), got ", keys[i - 1], " then ", keys[i], " at position ", i,
                      keys[i - 1] == keys[i] ? ": the coordinates contain duplicates" : "");
  if (symmetric) {
    TORCH_CHECK_VALUE(m == n, "symmetric kernel_map needs out_coords to be the indexed sites, got ", m, " and ", n,
                      " rows");
    for (int a = 0; a < 3; ++a)
      TORCH_CHECK_VALUE(g.size[a] % 2 == 1 && g.stride[a] == 1 && g.base[a] == -(g.size[a] / 2) * g.dilation[a],
                        "symmetric kernel_map needs stride 1 and a centred odd kernel");
  }
  const int64_t searched = symmetric ? kv / 2 : kv;
  at::parallel_for(0, m, 2048, [&](int64_t lo, int64_t hi) {
    for (int64_t k = 0; k < searched; ++k) {
      const int64_t* d = delta.data() + 3 * k;
      int64_t pos = 0, previous = -1;
      for (int64_t o = lo; o < hi; ++o) {
        const int32_t* c = cp + 4 * o;
        const int64_t qx = g.stride[0] * c[1] + d[0], qy = g.stride[1] * c[2] + d[1], qz = g.stride[2] * c[3] + d[2];
        int32_t found = -1;
        // A query outside the packable range cannot be an input site (all of them were packed).
        if (coord_in_range(c[0], qx, qy, qz)) {
          const int64_t target = pack_coord(c[0], qx, qy, qz);
          pos = target >= previous ? advance(keys, n, pos, target) : std::lower_bound(keys, keys + n, target) - keys;
          previous = target;
          if (pos < n && keys[pos] == target) found = static_cast<int32_t>(rows[pos]);
        }
        np[o * kv + k] = found;
      }
    }
    for (int64_t o = lo; o < hi && symmetric; ++o) {
      np[o * kv + searched] = static_cast<int32_t>(o);
      for (int64_t k = searched + 1; k < kv; ++k) np[o * kv + k] = -1;
    }
  });
  if (symmetric) {
    // Row i at offset K-1-k is the row o with nbmap[o][k] = i; for one k these writes hit distinct rows.
    at::parallel_for(0, m, 2048, [&](int64_t lo, int64_t hi) {
      for (int64_t o = lo; o < hi; ++o)
        for (int64_t k = 0; k < searched; ++k) {
          const int32_t i = np[o * kv + k];
          if (i >= 0) np[int64_t(i) * kv + (kv - 1 - k)] = static_cast<int32_t>(o);
        }
    });
  }
  return nbmap;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_map_pairs_cpu(const at::Tensor& nbmap) {
  check_dim(nbmap, "nbmap", 2, "int32 (M, K)");
  check_dtype(nbmap, "nbmap", at::kInt);
  TORCH_CHECK_VALUE(nbmap.size(0) <= std::numeric_limits<int32_t>::max(), "nbmap has ", nbmap.size(0),
                    " rows, more than int32 row indices can hold");
  auto nb = nbmap.contiguous();
  const int64_t m = nb.size(0), kv = nb.size(1);
  const int32_t* np = nb.data_ptr<int32_t>();
  // Rows are split into fixed chunks; counting per (offset, chunk) then filling in that order keeps the
  // result independent of the thread count.
  const int64_t chunk = 4096, chunks = (m + chunk - 1) / chunk;
  std::vector<int64_t> counts(kv * chunks + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t end = std::min(m, (t + 1) * chunk);
      for (int64_t o = t * chunk; o < end; ++o)
        for (int64_t k = 0; k < kv; ++k) counts[k * chunks + t] += np[o * kv + k] >= 0;
    }
  });
  auto sizes = at::zeros({kv}, nb.options().dtype(at::kLong));
  int64_t* sp = sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t k = 0; k < kv; ++k) {
    for (int64_t t = 0; t < chunks; ++t) {
      const int64_t c = counts[k * chunks + t];
      counts[k * chunks + t] = total;
      total += c;
      sp[k] += c;
    }
  }
  auto in_rows = at::empty({total}, nb.options());
  auto out_rows = at::empty({total}, nb.options());
  int32_t* ip = in_rows.data_ptr<int32_t>();
  int32_t* op = out_rows.data_ptr<int32_t>();
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t end = std::min(m, (t + 1) * chunk);
      for (int64_t k = 0; k < kv; ++k) {
        int64_t pos = counts[k * chunks + t];
        for (int64_t o = t * chunk; o < end; ++o) {
          const int32_t i = np[o * kv + k];
          if (i >= 0) {
            ip[pos] = i;
            op[pos] = static_cast<int32_t>(o);
            ++pos;
          }
        }
      }
    }
  });
  return {in_rows, out_rows, sizes};
}

std::tuple<at::Tensor, at::Tensor> strided_coords_cpu(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride, at::IntArrayRef dilation,
                                                      at::IntArrayRef base, at::OptionalIntArrayRef upper) {
  check_coords(coords, "coords");
  const KernelGeometry g = make_geometry(kernel_size, stride, dilation, base);
  int64_t hi_bound[3] = {kCoordMax + 1, kCoordMax + 1, kCoordMax + 1};
  const int64_t lo_bound = upper.has_value() ? 0 : kCoordMin;
  if (upper.has_value()) {
    check_triple(*upper, "upper", 0, std::numeric_limits<int64_t>::max());
    for (int a = 0; a < 3; ++a) hi_bound[a] = std::min<int64_t>((*upper)[a], kCoordMax + 1);
  }
  auto axis_sites = [&](int a, int64_t c, int64_t* site, int64_t* index) {
    int64_t count = 0;
    for (int64_t idx = 0; idx < g.size[a]; ++idx) {
      const int64_t v = c - g.base[a] - idx * g.dilation[a];
      const int64_t o = v / g.stride[a];
      if (v % g.stride[a] == 0 && o >= lo_bound && o < hi_bound[a]) {
        site[count] = o;
        index[count++] = idx;
      }
    }
    return count;
  };
  return unique_sites(coords, g, axis_sites, /*by_site=*/true);
}

std::tuple<at::Tensor, at::Tensor> generative_coords_cpu(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                         at::IntArrayRef stride, at::IntArrayRef dilation,
                                                         at::IntArrayRef base) {
  check_coords(coords, "coords");
  const KernelGeometry g = make_geometry(kernel_size, stride, dilation, base);
  // Check before packing: out-of-range sites would alias other keys. Sites grow with c, so the extremes decide.
  if (coords.size(0) > 0) {
    const auto [low, high] = at::aminmax(coords, 0);
    for (int a = 0; a < 3; ++a) {
      const int64_t first = g.stride[a] * low[a + 1].item<int32_t>() + g.base[a];
      const int64_t last = g.stride[a] * high[a + 1].item<int32_t>() + g.base[a] + (g.size[a] - 1) * g.dilation[a];
      TORCH_CHECK_VALUE(first >= kCoordMin && last <= kCoordMax, "generative_coords: output coordinates leave the "
                        "packable range [", kCoordMin, ", ", kCoordMax, "] along axis ", "xyz"[a], " (from ", first,
                        " to ", last, ")");
    }
  }
  auto axis_sites = [&](int a, int64_t c, int64_t* site, int64_t* index) {
    for (int64_t idx = 0; idx < g.size[a]; ++idx) {
      site[idx] = g.stride[a] * c + g.base[a] + idx * g.dilation[a];
      index[idx] = idx;
    }
    return g.size[a];
  };
  return unique_sites(coords, g, axis_sites, /*by_site=*/false);
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("kernel_map", &kernel_map_cpu);
  m.impl("kernel_map_pairs", &kernel_map_pairs_cpu);
  m.impl("strided_coords", &strided_coords_cpu);
  m.impl("generative_coords", &generative_coords_cpu);
}

}  // namespace torchsparse
