// Portable kernels of the kernel-map family: per-element bodies (TS_HOST_DEVICE functors of plain pointers and
// scalars) and the ops written once over a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA),
// so that the CPU suite runs the very code the GPU runs. Everything else (allocation, prefix sums, sorting) is ATen,
// which works on both devices. Results never depend on thread timing or on the number of threads: every entry is
// written by one thread, and compactions count first and fill second in a fixed order.
//
// Host synchronisations on CUDA (values read back to check arguments or to size outputs), per op:
//   kernel_map:        checked_index(sorted_rows) (min and max) and the strict-ascent test of sorted_keys;
//   kernel_map_pairs:  the copy of `sizes` to the CPU (which also sizes the pair lists);
//   strided_coords / generative_coords: the batch-range flag, the candidate total (to allocate), at::_unique, and
//                      for generative_coords one copy of the coordinates' per-column min and max (range check).
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>

#include "common/atomics.h"
#include "common/checks.h"
#include "common/coords.h"
#include "hashing/hashing_kernels.h"

namespace torchsparse {

// First position in keys[lo, hi) whose key is >= target.
TS_HOST_DEVICE int64_t lower_bound(const int64_t* keys, int64_t lo, int64_t hi, int64_t target) {
  int64_t count = hi - lo;
  while (count > 0) {
    const int64_t half = count / 2;
    if (keys[lo + half] < target) {
      lo += half + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  return lo;
}

// First position >= pos in keys[0, n) whose key is >= target, searching forward from pos: a branch-free count
// over the next 8 keys covers the short gaps of a merge, galloping (O(log gap)) covers the rest.
TS_HOST_DEVICE int64_t advance(const int64_t* keys, int64_t n, int64_t pos, int64_t target) {
  if (pos + 8 <= n) {
    int64_t below = 0;
    for (int i = 0; i < 8; ++i) below += keys[pos + i] < target;
    if (below < 8) return pos + below;
    pos += 8;
  }
  if (pos >= n || keys[pos] >= target) return pos;
  int64_t step = 1, prev = pos, next = pos + 1;
  while (next < n && keys[next] < target) {
    prev = next;
    step *= 2;
    next = prev + step;
  }
  return lower_bound(keys, prev + 1, next < n ? next : n, target);
}

// Arguments of kernel_map, checked: contiguous keys (strictly ascending), rows checked to index the n inputs,
// contiguous out_coords and the geometry.
struct KernelMapArgs {
  at::Tensor keys, rows, out_coords;
  KernelGeometry g;
};

// Raises the flag where keys[i] >= keys[i + 1].
struct NotAscendingBody {
  const int64_t* keys;
  int32_t* flag;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    if (keys[i] >= keys[i + 1]) raise_flag(flag);
  }
};

template <typename Launch>
KernelMapArgs checked_kernel_map_args(const at::Tensor& sorted_keys, const at::Tensor& sorted_rows,
                                      const at::Tensor& out_coords, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef dilation, at::IntArrayRef base,
                                      bool symmetric, const Launch& check_launch) {
  check_keys(sorted_keys, "sorted_keys");
  check_keys(sorted_rows, "sorted_rows");
  check_coords(out_coords, "out_coords");
  check_same_device({{&sorted_keys, "sorted_keys"}, {&sorted_rows, "sorted_rows"}, {&out_coords, "out_coords"}});
  TORCH_CHECK_VALUE(sorted_keys.size(0) == sorted_rows.size(0), "sorted_keys and sorted_rows must have the same "
                    "length, got ", sorted_keys.size(0), " and ", sorted_rows.size(0));
  KernelMapArgs args;
  args.g = make_geometry(kernel_size, stride, dilation, base);
  const KernelGeometry& g = args.g;
  const int64_t n = sorted_keys.size(0), m = out_coords.size(0);
  // The rows are written into the map (and, when symmetric, used as its row indices): they index the n inputs.
  args.rows = checked_index(sorted_rows, "sorted_rows", 0, n);
  args.keys = sorted_keys.contiguous();
  args.out_coords = out_coords.contiguous();
  // Searches need ascending keys; equal keys would be duplicate coordinates.
  if (n > 1) {
    auto flag = at::zeros({}, args.out_coords.options());
    check_launch(n - 1, NotAscendingBody{args.keys.data_ptr<int64_t>(), flag.data_ptr<int32_t>()});
    if (flag.item<int32_t>() != 0) {  // find the first descent (error path only)
      const auto not_ascending = args.keys.slice(0, 1).le(args.keys.slice(0, 0, n - 1));
      const int64_t i = at::nonzero(not_ascending)[0][0].item<int64_t>() + 1;
      const int64_t before = args.keys[i - 1].item<int64_t>(), after = args.keys[i].item<int64_t>();
      TORCH_CHECK_VALUE(false, "sorted_keys must be strictly ascending (sorted keys of unique coordinates), got ",
                        before, " then ", after, " at position ", i,
                        before == after ? ": the coordinates contain duplicates" : "");
    }
  }
  if (symmetric) {
    TORCH_CHECK_VALUE(m == n, "symmetric kernel_map needs out_coords to be the indexed sites, got ", m, " and ", n,
                      " rows");
    for (int a = 0; a < 3; ++a)
      TORCH_CHECK_VALUE(g.size[a] % 2 == 1 && g.stride[a] == 1 && g.base[a] == -(g.size[a] / 2) * g.dilation[a],
                        "symmetric kernel_map needs stride 1 and a centred odd kernel");
  }
  return args;
}

// Cell (chunk t, offset k) of the (M, K) map: rows [t * chunk, (t + 1) * chunk) at offset k.
//   k < searched: each query is the output's packed key shifted by offset k, so for outputs in sorted order the
//     queries of one cell are sorted too, and a merge walking the sorted input keys forward finds them all,
//     reading memory sequentially instead of probing at random. A query below the previous one (unsorted
//     outputs) restarts with a binary search: correct for any order, fastest for sorted outputs.
//   symmetric: the centre offset `searched` holds the row itself and the offsets above it -1 until MirrorBody.
// Cells are ordered chunk-major, so neighbouring threads of a warp write neighbouring entries of one row.
struct KernelMapBody {
  const int64_t* keys;
  const int64_t* rows;
  int64_t n;
  const int32_t* out_coords;
  int64_t m;
  int32_t* nbmap;
  KernelGeometry g;
  int64_t searched;  // K, or K / 2 when symmetric
  bool symmetric;
  int64_t chunk;

  TS_HOST_DEVICE void operator()(int64_t cell) const {
    const int64_t kv = g.volume(), k = cell % kv, lo = cell / kv * chunk, hi = lo + chunk < m ? lo + chunk : m;
    if (k >= searched) {
      for (int64_t o = lo; o < hi; ++o) nbmap[o * kv + k] = symmetric && k == searched ? static_cast<int32_t>(o) : -1;
      return;
    }
    int64_t idx[3], delta[3];
    g.index(k, idx);
    for (int a = 0; a < 3; ++a) delta[a] = g.base[a] + idx[a] * g.dilation[a];
    int64_t pos = 0, previous = -1;
    for (int64_t o = lo; o < hi; ++o) {
      const int32_t* c = out_coords + 4 * o;
      const int64_t qx = g.stride[0] * c[1] + delta[0], qy = g.stride[1] * c[2] + delta[1],
                    qz = g.stride[2] * c[3] + delta[2];
      int32_t found = -1;
      // A query outside the packable range cannot be an input site (all of them were packed).
      if (coord_in_range(c[0], qx, qy, qz)) {
        const int64_t target = pack_coord(c[0], qx, qy, qz);
        pos = target >= previous ? advance(keys, n, pos, target) : lower_bound(keys, 0, n, target);
        previous = target;
        if (pos < n && keys[pos] == target) found = static_cast<int32_t>(rows[pos]);
      }
      nbmap[o * kv + k] = found;
    }
  }
};

// Row o: the row i found for (output o, offset k < K/2) has o at the mirrored offset K-1-k. Reads the searched half
// and writes the other, and for one k the rows i are distinct (sorted_rows is a permutation when the outputs are
// the indexed sites, as symmetric requires): every entry is written at most once.
struct MirrorBody {
  int32_t* nbmap;
  int64_t kv;
  int64_t searched;

  TS_HOST_DEVICE void operator()(int64_t o) const {
    for (int64_t k = 0; k < searched; ++k) {
      const int32_t i = nbmap[o * kv + k];
      if (i >= 0) nbmap[int64_t(i) * kv + (kv - 1 - k)] = static_cast<int32_t>(o);
    }
  }
};

// chunk: rows per merge (long merges stream through the keys, short ones spread over more threads). check_launch
// runs the key check: on the CPU a serial scan of the keys (0.1 ms for 10^5 keys) beats waking a thread team when
// the cores are busy.
template <typename Launch>
at::Tensor kernel_map_with(const at::Tensor& sorted_keys, const at::Tensor& sorted_rows, const at::Tensor& out_coords,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation,
                           at::IntArrayRef base, bool symmetric, int64_t chunk, const Launch& launch,
                           const Launch& check_launch) {
  const KernelMapArgs args =
      checked_kernel_map_args(sorted_keys, sorted_rows, out_coords, kernel_size, stride, dilation, base, symmetric,
                              check_launch);
  const int64_t m = args.out_coords.size(0), kv = args.g.volume(), searched = symmetric ? kv / 2 : kv;
  auto nbmap = at::empty({m, kv}, args.out_coords.options());
  launch((m + chunk - 1) / chunk * kv,
         KernelMapBody{args.keys.data_ptr<int64_t>(), args.rows.data_ptr<int64_t>(), args.keys.size(0),
                       args.out_coords.data_ptr<int32_t>(), m, nbmap.data_ptr<int32_t>(), args.g, searched, symmetric,
                       chunk});
  if (symmetric) launch(m, MirrorBody{nbmap.data_ptr<int32_t>(), kv, searched});
  return nbmap;
}

// Cell (chunk t, offset k) of an (M, K) map, cells chunk-major: counts[k * T + t] = present entries of rows
// [t * chunk, (t + 1) * chunk) at offset k (T chunks).
struct PairCountBody {
  const int32_t* nbmap;
  int64_t m, kv, chunk, chunks;
  int64_t* counts;

  TS_HOST_DEVICE void operator()(int64_t cell) const {
    const int64_t t = cell / kv, k = cell % kv, end = (t + 1) * chunk < m ? (t + 1) * chunk : m;
    int64_t count = 0;
    for (int64_t o = t * chunk; o < end; ++o) count += nbmap[o * kv + k] >= 0;
    counts[k * chunks + t] = count;
  }
};

// The same cells, writing their present entries from starts[k * T + t] (exclusive prefix sum of the counts in
// (offset, chunk) order): pairs grouped by offset and ascending in output row, whatever the thread timing.
struct PairFillBody {
  const int32_t* nbmap;
  int64_t m, kv, chunk, chunks;
  const int64_t* starts;
  int32_t* in_rows;
  int32_t* out_rows;

  TS_HOST_DEVICE void operator()(int64_t cell) const {
    const int64_t t = cell / kv, k = cell % kv, end = (t + 1) * chunk < m ? (t + 1) * chunk : m;
    int64_t pos = starts[k * chunks + t];
    for (int64_t o = t * chunk; o < end; ++o) {
      const int32_t i = nbmap[o * kv + k];
      if (i >= 0) {
        in_rows[pos] = i;
        out_rows[pos++] = static_cast<int32_t>(o);
      }
    }
  }
};

// `sizes` is returned on the CPU for every device (the convolutions slice by it on the host): on CUDA that is one
// device-to-host copy per map, which also sizes the outputs.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_map_pairs_with(const at::Tensor& nbmap, int64_t chunk,
                                                                     const Launch& launch) {
  check_dim(nbmap, "nbmap", 2, "int32 (M, K)");
  check_dtype(nbmap, "nbmap", at::kInt);
  TORCH_CHECK_VALUE(nbmap.size(0) <= std::numeric_limits<int32_t>::max(), "nbmap has ", nbmap.size(0),
                    " rows, more than int32 row indices can hold");
  auto nb = nbmap.contiguous();
  const int64_t m = nb.size(0), kv = nb.size(1), chunks = (m + chunk - 1) / chunk;
  auto counts = at::empty({kv, chunks}, nb.options().dtype(at::kLong));
  launch(kv * chunks, PairCountBody{nb.data_ptr<int32_t>(), m, kv, chunk, chunks, counts.data_ptr<int64_t>()});
  const auto sizes = counts.sum(1).cpu();
  const int64_t total = sizes.sum().item<int64_t>();
  const auto starts = counts.view(-1).cumsum(0).sub_(counts.view(-1));
  auto in_rows = at::empty({total}, nb.options());
  auto out_rows = at::empty({total}, nb.options());
  launch(kv * chunks, PairFillBody{nb.data_ptr<int32_t>(), m, kv, chunk, chunks, starts.data_ptr<int64_t>(),
                                   in_rows.data_ptr<int32_t>(), out_rows.data_ptr<int32_t>()});
  return {in_rows, out_rows, sizes};
}

// Output sites of a strided convolution: o = (c - base - index * dilation) / stride per axis where that divides
// exactly, kept inside [lower, upper).
struct StridedRule {
  static constexpr bool kBySite = true;  // the map is (sites, K) holding input rows
  KernelGeometry g;
  int64_t lower;
  int64_t upper[3];

  TS_HOST_DEVICE bool site(int a, int64_t c, int64_t index, int64_t* o) const {
    const int64_t v = c - g.base[a] - index * g.dilation[a];
    *o = v / g.stride[a];
    return v % g.stride[a] == 0 && *o >= lower && *o < upper[a];
  }
};

// Output sites of a generative transposed convolution: stride * c + base + index * dilation, always a site.
struct GenerativeRule {
  static constexpr bool kBySite = false;  // the map is (inputs, K) holding site rows
  KernelGeometry g;

  TS_HOST_DEVICE bool site(int a, int64_t c, int64_t index, int64_t* o) const {
    *o = g.stride[a] * c + g.base[a] + index * g.dilation[a];
    return true;
  }
};

// counts[i] = number of candidate sites of input i: the product over axes of the kernel indices giving a site.
// Raises bad_batch for a batch index outside [0, kBatchMax] (its sites would not pack exactly).
template <typename Rule>
struct CountBody {
  Rule rule;
  const int32_t* coords;
  int64_t* counts;
  int32_t* bad_batch;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    if (coords[4 * i] < 0 || coords[4 * i] > kBatchMax) raise_flag(bad_batch);
    int64_t count = 1, o;
    for (int a = 0; a < 3; ++a) {
      int64_t axis = 0;
      for (int64_t idx = 0; idx < rule.g.size[a]; ++idx) axis += rule.site(a, coords[4 * i + a + 1], idx, &o);
      count *= axis;  // <= K
    }
    counts[i] = count;
  }
};

// Writes the candidates of input i at [starts[i], starts[i] + counts[i]): packed site key and kernel offset.
template <typename Rule>
struct FillBody {
  Rule rule;
  const int32_t* coords;
  const int64_t* starts;  // exclusive prefix sum of the counts
  int64_t* keys;
  int32_t* offsets;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int32_t* r = coords + 4 * i;
    const KernelGeometry& g = rule.g;
    int64_t j = starts[i], idx[3], s[3];
    for (idx[0] = 0; idx[0] < g.size[0]; ++idx[0]) {
      if (!rule.site(0, r[1], idx[0], &s[0])) continue;
      for (idx[1] = 0; idx[1] < g.size[1]; ++idx[1]) {
        if (!rule.site(1, r[2], idx[1], &s[1])) continue;
        for (idx[2] = 0; idx[2] < g.size[2]; ++idx[2]) {
          if (!rule.site(2, r[3], idx[2], &s[2])) continue;
          keys[j] = pack_coord(r[0], s[0], s[1], s[2]);
          offsets[j++] = static_cast<int32_t>(g.flat(idx));
        }
      }
    }
  }
};

// Links input i with the sites of its candidates (inverse[j]: row of candidate j among the unique sites). Distinct
// candidates of one input differ in their offset, and distinct inputs reaching one site at one offset would be
// equal coordinates: every entry is written at most once.
template <bool kBySite>
struct LinkBody {
  const int64_t* starts;
  const int64_t* inverse;
  const int32_t* offsets;
  int32_t* nbmap;
  int64_t kv;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    for (int64_t j = starts[i]; j < starts[i + 1]; ++j) {
      if constexpr (kBySite)
        nbmap[inverse[j] * kv + offsets[j]] = static_cast<int32_t>(i);
      else
        nbmap[i * kv + offsets[j]] = static_cast<int32_t>(inverse[j]);
    }
  }
};

// Sorted unique sites over all (input, offset) candidates of `rule`, with the map linking them: count, prefix sum,
// fill, sort-unique with inverse, link. The candidate buffer is sized exactly and its order does not depend on
// the thread count. Returns the sites int32 (M, 4) and the int32 map: (M, K) input rows when Rule::kBySite, else
// (N, K) site rows; -1 elsewhere. `coords` is checked int32 (N, 4) and contiguous; ValueError for a batch index
// outside [0, kBatchMax].
template <typename Rule, typename Launch>
std::tuple<at::Tensor, at::Tensor> unique_sites_with(const at::Tensor& coords, const Rule& rule,
                                                     const Launch& launch) {
  const int64_t n = coords.size(0), kv = rule.g.volume();
  // Each input yields at most K candidates, so this bound keeps the prefix sum exact.
  checked_mul(n, kv, "the number of candidate output sites");
  const int32_t* cp = coords.data_ptr<int32_t>();
  auto starts = at::zeros({n + 1}, coords.options().dtype(at::kLong));
  auto bad_batch = at::zeros({}, coords.options());
  launch(n, CountBody<Rule>{rule, cp, starts.data_ptr<int64_t>() + 1, bad_batch.data_ptr<int32_t>()});
  TORCH_CHECK_VALUE(bad_batch.item<int32_t>() == 0, "coords batch indices must be in [0, ", kBatchMax, "]");
  starts.cumsum_(0);
  const int64_t total = starts[n].item<int64_t>();
  auto candidates = at::empty({total}, starts.options());
  auto offsets = at::empty({total}, coords.options());
  launch(n, FillBody<Rule>{rule, cp, starts.data_ptr<int64_t>(), candidates.data_ptr<int64_t>(),
                           offsets.data_ptr<int32_t>()});
  const auto [keys, inverse] = at::_unique(candidates, /*sorted=*/true, /*return_inverse=*/true);
  const int64_t m = keys.size(0);
  const int64_t map_rows = Rule::kBySite ? m : n;
  auto nbmap = at::full({map_rows, kv}, -1, coords.options());
  launch(n, LinkBody<Rule::kBySite>{starts.data_ptr<int64_t>(), inverse.data_ptr<int64_t>(),
                                    offsets.data_ptr<int32_t>(), nbmap.data_ptr<int32_t>(), kv});
  auto sites = at::empty({m, 4}, coords.options());
  launch(m, UnpackBody{keys.data_ptr<int64_t>(), sites.data_ptr<int32_t>()});
  return {sites, nbmap};
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> strided_coords_with(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride, at::IntArrayRef dilation,
                                                       at::IntArrayRef base, at::OptionalIntArrayRef upper,
                                                       const Launch& launch) {
  check_coords(coords, "coords");
  StridedRule rule;
  rule.g = make_geometry(kernel_size, stride, dilation, base);
  // Sites stay inside the packable range whatever the geometry.
  rule.lower = upper.has_value() ? 0 : kCoordMin;
  for (int a = 0; a < 3; ++a) rule.upper[a] = kCoordMax + 1;
  if (upper.has_value()) {
    check_triple(*upper, "upper", 0, std::numeric_limits<int64_t>::max());
    for (int a = 0; a < 3; ++a) rule.upper[a] = std::min<int64_t>((*upper)[a], kCoordMax + 1);
  }
  return unique_sites_with(coords.contiguous(), rule, launch);
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> generative_coords_with(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                          at::IntArrayRef stride, at::IntArrayRef dilation,
                                                          at::IntArrayRef base, const Launch& launch) {
  check_coords(coords, "coords");
  GenerativeRule rule;
  rule.g = make_geometry(kernel_size, stride, dilation, base);
  const KernelGeometry& g = rule.g;
  const auto c = coords.contiguous();
  // Check before packing: out-of-range sites would alias other keys. Sites grow with c, so the extremes decide
  // (one copy of the per-column minimum and maximum to the host).
  if (c.size(0) > 0) {
    const auto [low, high] = at::aminmax(c, 0);
    const auto range = at::stack({low, high}).to(at::kCPU, at::kLong);
    const int64_t* rp = range.data_ptr<int64_t>();
    for (int a = 0; a < 3; ++a) {
      const int64_t first = g.stride[a] * rp[a + 1] + g.base[a];
      const int64_t last = g.stride[a] * rp[4 + a + 1] + g.base[a] + (g.size[a] - 1) * g.dilation[a];
      TORCH_CHECK_VALUE(first >= kCoordMin && last <= kCoordMax, "generative_coords: output coordinates leave the "
                        "packable range [", kCoordMin, ", ", kCoordMax, "] along axis ", "xyz"[a], " (from ", first,
                        " to ", last, ")");
    }
  }
  return unique_sites_with(c, rule, launch);
}

}  // namespace torchsparse
