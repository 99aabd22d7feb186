// pointacc._core: the simulator's hot loops, bound with pybind11. No torch: numpy arrays in and out.
//
// - kernel_map: the Mapping Unit's merge-based kernel-map search over sorted packed coordinate keys.
// - gather_cache: the input-feature cache of the Memory Management Unit, simulated over the real gather stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The engine's key layout: batch 15 bits | x, y, z 16 bits each, biased by 2^15. Keys order (b, x, y, z)
// lexicographically, and an affine map s * o + d with s > 0 keeps that order, so shifted lists stay sorted.
constexpr int64_t kBias = 32768;

bool in_range(int64_t b, int64_t x, int64_t y, int64_t z) {
  return b >= 0 && b < 32768 && x >= -kBias && x < kBias && y >= -kBias && y < kBias && z >= -kBias && z < kBias;
}

int64_t pack(int64_t b, int64_t x, int64_t y, int64_t z) {
  return (b << 48) | ((x + kBias) << 32) | ((y + kBias) << 16) | (z + kBias);
}

std::vector<int64_t> keys_of(const Int32Array& coords, const char* name) {
  if (coords.ndim() != 2 || coords.shape(1) != 4) {
    throw std::invalid_argument(std::string(name) + " must be int32 (N, 4) as (batch, x, y, z)");
  }
  const int64_t n = coords.shape(0);
  const int32_t* c = coords.data();
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* r = c + 4 * i;
    if (!in_range(r[0], r[1], r[2], r[3])) throw std::invalid_argument(std::string(name) + " out of the packable range");
    keys[i] = pack(r[0], r[1], r[2], r[3]);
  }
  return keys;
}

std::vector<int64_t> argsort(const std::vector<int64_t>& keys) {
  std::vector<int64_t> order(keys.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  return order;
}

// For every offset d_k, pairs (i, o) with coords_in[i] == stride * coords_out[o] + d_k (same batch), found by
// merging the sorted input keys with the sorted, shifted output keys. Returns in_rows, out_rows (grouped by
// offset, in ascending output-key order within one), sizes (K,) and the merge steps per offset (K,), the
// comparisons a merger performs.
py::tuple kernel_map(const Int32Array& in_coords, const Int32Array& out_coords, const Int32Array& offsets,
                     const Int64Array& stride) {
  if (offsets.ndim() != 2 || offsets.shape(1) != 3) throw std::invalid_argument("offsets must be int32 (K, 3)");
  if (stride.ndim() != 1 || stride.shape(0) != 3) throw std::invalid_argument("stride must have 3 values");
  const int64_t* s = stride.data();
  for (int a = 0; a < 3; ++a) {
    if (s[a] < 1) throw std::invalid_argument("stride values must be >= 1");
  }
  const std::vector<int64_t> in_keys = keys_of(in_coords, "in_coords");
  const int64_t n_out = out_coords.shape(0);
  if (out_coords.ndim() != 2 || out_coords.shape(1) != 4) {
    throw std::invalid_argument("out_coords must be int32 (M, 4) as (batch, x, y, z)");
  }
  const std::vector<int64_t> in_order = argsort(in_keys);
  std::vector<int64_t> sorted_in(in_keys.size());
  for (size_t i = 0; i < in_order.size(); ++i) sorted_in[i] = in_keys[in_order[i]];
  for (size_t i = 1; i < sorted_in.size(); ++i) {
    if (sorted_in[i] == sorted_in[i - 1]) throw std::invalid_argument("in_coords contain duplicate rows");
  }
  // Outputs in lexicographic (b, x, y, z) order; s * o + d keeps it, so every offset's queries are sorted.
  const int32_t* oc = out_coords.data();
  std::vector<int64_t> out_order(n_out);
  std::iota(out_order.begin(), out_order.end(), 0);
  std::stable_sort(out_order.begin(), out_order.end(), [&](int64_t a, int64_t b) {
    const int32_t* ra = oc + 4 * a;
    const int32_t* rb = oc + 4 * b;
    return std::lexicographical_compare(ra, ra + 4, rb, rb + 4);
  });

  const int64_t k_count = offsets.shape(0);
  const int32_t* off = offsets.data();
  std::vector<int32_t> in_rows, out_rows;
  std::vector<int64_t> sizes(k_count, 0), steps(k_count, 0);
  std::vector<int64_t> query(n_out);
  std::vector<int64_t> query_row(n_out);
  for (int64_t k = 0; k < k_count; ++k) {
    int64_t valid = 0;
    for (int64_t j = 0; j < n_out; ++j) {
      const int32_t* r = oc + 4 * out_order[j];
      const int64_t x = r[1] * s[0] + off[3 * k], y = r[2] * s[1] + off[3 * k + 1], z = r[3] * s[2] + off[3 * k + 2];
      if (!in_range(r[0], x, y, z)) continue;  // no input can sit outside the packable range
      query[valid] = pack(r[0], x, y, z);
      query_row[valid] = out_order[j];
      ++valid;
    }
    // Merge: advance whichever stream holds the smaller key; every step is one comparison.
    int64_t a = 0, b = 0, step = 0;
    const int64_t na = static_cast<int64_t>(sorted_in.size());
    while (a < na && b < valid) {
      ++step;
      if (sorted_in[a] < query[b]) {
        ++a;
      } else if (query[b] < sorted_in[a]) {
        ++b;
      } else {
        in_rows.push_back(static_cast<int32_t>(in_order[a]));
        out_rows.push_back(static_cast<int32_t>(query_row[b]));
        ++sizes[k];
        ++a;
        ++b;
      }
    }
    steps[k] = step;
  }
  return py::make_tuple(py::array_t<int32_t>(in_rows.size(), in_rows.data()),
                        py::array_t<int32_t>(out_rows.size(), out_rows.data()),
                        py::array_t<int64_t>(sizes.size(), sizes.data()),
                        py::array_t<int64_t>(steps.size(), steps.data()));
}


// A set-associative cache of lines with LRU or FIFO replacement (direct-mapped = 1 way): per set a doubly
// linked list over its slots, most recent (LRU) or newest (FIFO) first, and a hash map from line to slot.
class Cache {
 public:
  Cache(int64_t num_sets, int64_t ways, bool lru)
      : num_sets_(num_sets), ways_(ways), lru_(lru), line_(num_sets * ways, -1), prev_(num_sets * ways, -1),
        next_(num_sets * ways, -1), head_(num_sets, -1), tail_(num_sets, -1), count_(num_sets, 0) {
    where_.reserve(static_cast<size_t>(2 * num_sets * ways));
  }

  // Returns true on a hit; on a miss the line is brought in, evicting the set's last line when full.
  bool access(int64_t line) {
    auto found = where_.find(line);
    if (found != where_.end()) {
      if (lru_) move_to_front(found->second, line % num_sets_);
      return true;
    }
    const int64_t set = line % num_sets_;
    int64_t slot;
    if (count_[set] < ways_) {
      slot = set * ways_ + count_[set]++;
    } else {
      slot = tail_[set];
      unlink(slot, set);
      where_.erase(line_[slot]);
    }
    line_[slot] = line;
    where_[line] = slot;
    push_front(slot, set);
    return false;
  }

 private:
  void unlink(int64_t slot, int64_t set) {
    if (prev_[slot] >= 0) next_[prev_[slot]] = next_[slot]; else head_[set] = next_[slot];
    if (next_[slot] >= 0) prev_[next_[slot]] = prev_[slot]; else tail_[set] = prev_[slot];
    prev_[slot] = next_[slot] = -1;
  }
  void push_front(int64_t slot, int64_t set) {
    next_[slot] = head_[set];
    prev_[slot] = -1;
    if (head_[set] >= 0) prev_[head_[set]] = slot;
    head_[set] = slot;
    if (tail_[set] < 0) tail_[set] = slot;
  }
  void move_to_front(int64_t slot, int64_t set) {
    if (head_[set] == slot) return;
    unlink(slot, set);
    push_front(slot, set);
  }

  int64_t num_sets_, ways_;
  bool lru_;
  std::vector<int64_t> line_, prev_, next_, head_, tail_, count_;
  std::unordered_map<int64_t, int64_t> where_;
};

Cache make_cache(int64_t num_sets, int64_t ways, const std::string& policy) {
  if (num_sets < 1 || ways < 1) throw std::invalid_argument("num_sets and ways must be >= 1");
  if (policy != "lru" && policy != "fifo" && policy != "direct") {
    throw std::invalid_argument("policy must be lru, fifo or direct, got " + policy);
  }
  if (policy == "direct" && ways != 1) throw std::invalid_argument("a direct-mapped cache has 1 way");
  return Cache(num_sets, ways, policy == "lru");
}

// Hits of a line stream (int64 line ids >= 0) in a cache: the textbook interface, used by the tests.
int64_t cache_hits(const Int64Array& lines, int64_t num_sets, int64_t ways, const std::string& policy) {
  Cache cache = make_cache(num_sets, ways, policy);
  const int64_t* l = lines.data();
  int64_t hits = 0;
  for (int64_t i = 0, n = lines.size(); i < n; ++i) {
    if (l[i] < 0) throw std::invalid_argument("line ids must be >= 0");
    hits += cache.access(l[i]);
  }
  return hits;
}

// The gather of a sparse convolution through the cache. Pairs (in_rows, out_rows) are grouped by offset
// (sizes); order "offset" streams them as stored (offset-major), "output" visits every output row's inputs
// in offset order (output-major, a stable counting sort by output row). An input row lives in line
// row / line_points. Returns (accesses, hits).
py::tuple gather_cache(const Int32Array& in_rows, const Int32Array& out_rows, int64_t num_out,
                       const std::string& order, int64_t line_points, int64_t num_sets, int64_t ways,
                       const std::string& policy) {
  if (in_rows.size() != out_rows.size()) throw std::invalid_argument("in_rows and out_rows must have equal length");
  if (order != "output" && order != "offset") throw std::invalid_argument("order must be output or offset");
  if (line_points < 1) throw std::invalid_argument("line_points must be >= 1");
  const int64_t p = in_rows.size();
  const int32_t* in = in_rows.data();
  const int32_t* out = out_rows.data();
  std::vector<int64_t> sequence;
  if (order == "output") {
    std::vector<int64_t> start(num_out + 1, 0);
    for (int64_t i = 0; i < p; ++i) {
      if (out[i] < 0 || out[i] >= num_out) throw std::invalid_argument("out_rows must be in [0, num_out)");
      ++start[out[i] + 1];
    }
    for (int64_t o = 0; o < num_out; ++o) start[o + 1] += start[o];
    sequence.resize(p);
    for (int64_t i = 0; i < p; ++i) sequence[start[out[i]]++] = i;
  }
  Cache cache = make_cache(num_sets, ways, policy);
  int64_t hits = 0;
  for (int64_t j = 0; j < p; ++j) {
    const int64_t i = order == "output" ? sequence[j] : j;
    if (in[i] < 0) throw std::invalid_argument("in_rows must be >= 0");
    hits += cache.access(in[i] / line_points);
  }
  return py::make_tuple(p, hits);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "PointAcc simulator core: merge-based kernel maps and the gather cache";
  m.def("kernel_map", &kernel_map, py::arg("in_coords"), py::arg("out_coords"), py::arg("offsets"),
        py::arg("stride"));
  m.def("cache_hits", &cache_hits, py::arg("lines"), py::arg("num_sets"), py::arg("ways"), py::arg("policy"));
  m.def("gather_cache", &gather_cache, py::arg("in_rows"), py::arg("out_rows"), py::arg("num_out"),
        py::arg("order"), py::arg("line_points"), py::arg("num_sets"), py::arg("ways"), py::arg("policy"));
}
