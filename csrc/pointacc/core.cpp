// pointacc._core: the simulator's hot loops, bound with pybind11. No torch: numpy arrays in and out.
//
// - kernel_map: the Mapping Unit's merge-based kernel-map search over sorted packed coordinate keys.
// - gather_cache: the input-feature cache of the Memory Management Unit, simulated over the real gather stream.
//
// Every argument is checked before memory is read through it: arrays must have an integer dtype (any width or
// signedness, converted when every value fits; floats, bools and objects are rejected, never truncated) and the
// documented shape, counts and ids their ranges. Bad arguments raise ValueError / TypeError naming them. Memory
// follows the arrays passed in, never the cache geometry: a cache of 2^62 sets costs what the stream touches.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

using Int32Array = py::array_t<int32_t, py::array::c_style>;

// The largest row count: rows are returned as int32 indices.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

std::string dtype_name(const py::array& array) { return py::str(array.dtype()).cast<std::string>(); }

// `values` as a C-contiguous array of T (a copy only when it is not one already), or TypeError / ValueError
// naming `name`: not array-like, a non-integer dtype (unless empty: nothing to misread) or a value outside T.
template <typename T>
py::array_t<T, py::array::c_style> integer_array(const py::object& values, const char* name) {
  py::array array = py::array::ensure(values);
  if (!array) throw py::type_error(std::string(name) + " must be an integer array");
  const char kind = array.dtype().kind();
  if (array.size() > 0 && kind != 'i' && kind != 'u') {
    throw py::type_error(std::string(name) + " must be an integer array, got dtype " + dtype_name(array));
  }
  // A cast would wrap values that do not fit T: check them in the source's own signedness first.
  const auto width = static_cast<py::ssize_t>(sizeof(T));
  if (array.size() > 0 && (array.itemsize() > width || (kind == 'u' && array.itemsize() == width))) {
    bool fits = true;
    if (kind == 'u') {
      auto wide = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(array);
      const uint64_t* v = wide.data();
      const auto high = static_cast<uint64_t>(std::numeric_limits<T>::max());
      for (py::ssize_t i = 0, n = wide.size(); i < n && fits; ++i) fits = v[i] <= high;
    } else {
      auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(array);
      const int64_t* v = wide.data();
      for (py::ssize_t i = 0, n = wide.size(); i < n && fits; ++i) {
        fits = v[i] >= std::numeric_limits<T>::min() && v[i] <= std::numeric_limits<T>::max();
      }
    }
    if (!fits) throw py::value_error(std::string(name) + " has values outside " + (width == 4 ? "int32" : "int64"));
  }
  auto out = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(array);
  if (!out) throw py::type_error(std::string(name) + " cannot be read as an integer array");
  return out;
}

// A 1-D integer array argument.
template <typename T>
py::array_t<T, py::array::c_style> vector_argument(const py::object& values, const char* name) {
  auto array = integer_array<T>(values, name);
  if (array.ndim() != 1) {
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(array.ndim()) + " dimensions");
  }
  return array;
}

// A 2-D integer array argument of `columns` columns and at most kMaxRows rows.
template <typename T>
py::array_t<T, py::array::c_style> table_argument(const py::object& values, const char* name, int64_t columns,
                                                  const char* layout) {
  auto array = integer_array<T>(values, name);
  if (array.ndim() != 2 || array.shape(1) != columns) throw py::value_error(std::string(name) + " must be " + layout);
  if (array.shape(0) > kMaxRows) throw py::value_error(std::string(name) + " has more than 2^31 - 1 rows");
  return array;
}

void check_at_least(int64_t value, int64_t low, const char* name) {
  if (value < low) {
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(low) + ", got " + std::to_string(value));
  }
}

// The engine's key layout (csrc/common/coords.h; the simulator links no torch, so it keeps this copy, pinned equal
// by tests/pointacc/test_constants.py): batch 15 bits | x, y, z 16 bits each, biased by 2^15. Keys order
// (b, x, y, z) lexicographically, and an affine map s * o + d with s > 0 keeps that order, so shifted lists stay
// sorted.
constexpr int64_t kBias = 32768;

bool in_range(int64_t b, int64_t x, int64_t y, int64_t z) {
  return b >= 0 && b < 32768 && x >= -kBias && x < kBias && y >= -kBias && y < kBias && z >= -kBias && z < kBias;
}

int64_t pack(int64_t b, int64_t x, int64_t y, int64_t z) {
  return (b << 48) | ((x + kBias) << 32) | ((y + kBias) << 16) | (z + kBias);
}

std::vector<int64_t> keys_of(const Int32Array& coords, const char* name) {
  const int64_t n = coords.shape(0);
  const int32_t* c = coords.data();
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* r = c + 4 * i;
    if (!in_range(r[0], r[1], r[2], r[3])) {
      throw py::value_error(std::string(name) + " row " + std::to_string(i) +
                            " is out of the packable range (batch in [0, 32768), x, y, z in [-32768, 32768))");
    }
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

// stride * o + d on one axis, or false when it leaves int64 (then it is outside the packable range anyway).
bool shifted(int64_t o, int64_t stride, int64_t d, int64_t* out) {
  return !__builtin_mul_overflow(o, stride, out) && !__builtin_add_overflow(*out, d, out);
}

// For every offset d_k, pairs (i, o) with coords_in[i] == stride * coords_out[o] + d_k (same batch), found by
// merging the sorted input keys with the sorted, shifted output keys. Returns in_rows, out_rows (grouped by
// offset, in ascending output-key order within one), sizes (K,) and the merge steps per offset (K,), the
// comparisons a merger performs.
py::tuple kernel_map(const py::object& in_coords_arg, const py::object& out_coords_arg, const py::object& offsets_arg,
                     const py::object& stride_arg) {
  const auto in_coords = table_argument<int32_t>(in_coords_arg, "in_coords", 4, "(N, 4) as (batch, x, y, z)");
  const auto out_coords = table_argument<int32_t>(out_coords_arg, "out_coords", 4, "(M, 4) as (batch, x, y, z)");
  const auto offsets = integer_array<int32_t>(offsets_arg, "offsets");
  if (offsets.ndim() != 2 || offsets.shape(1) != 3) throw py::value_error("offsets must be (K, 3)");
  const auto stride = vector_argument<int64_t>(stride_arg, "stride");
  if (stride.shape(0) != 3) throw py::value_error("stride must have 3 values, got " + std::to_string(stride.shape(0)));
  const int64_t* s = stride.data();
  for (int a = 0; a < 3; ++a) check_at_least(s[a], 1, "stride values");
  const std::vector<int64_t> in_keys = keys_of(in_coords, "in_coords");
  const int64_t n_out = out_coords.shape(0);
  const std::vector<int64_t> in_order = argsort(in_keys);
  std::vector<int64_t> sorted_in(in_keys.size());
  for (size_t i = 0; i < in_order.size(); ++i) sorted_in[i] = in_keys[in_order[i]];
  for (size_t i = 1; i < sorted_in.size(); ++i) {
    if (sorted_in[i] == sorted_in[i - 1]) throw py::value_error("in_coords contain duplicate rows");
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
      int64_t x, y, z;
      const bool fits = shifted(r[1], s[0], off[3 * k], &x) && shifted(r[2], s[1], off[3 * k + 1], &y) &&
                        shifted(r[3], s[2], off[3 * k + 2], &z);
      if (!fits || !in_range(r[0], x, y, z)) continue;  // no input can sit outside the packable range
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
// Slots are created as sets fill, so they never outnumber the distinct lines accessed; with more sets than
// accesses the sets met are numbered in a hash map instead of keeping per-set state for every one. Memory is
// therefore O(accesses) whatever the geometry.
class Cache {
 public:
  Cache(int64_t num_sets, int64_t ways, bool lru, int64_t accesses)
      : num_sets_(num_sets), ways_(ways), lru_(lru), sparse_(num_sets > accesses) {
    if (!sparse_) {
      head_.assign(num_sets, -1);
      tail_.assign(num_sets, -1);
      count_.assign(num_sets, 0);
    }
    int64_t capacity;
    if (__builtin_mul_overflow(num_sets, ways, &capacity) || capacity > accesses) capacity = accesses;
    line_.reserve(capacity);
    prev_.reserve(capacity);
    next_.reserve(capacity);
    where_.reserve(static_cast<size_t>(capacity));
  }

  // Returns true on a hit; on a miss the line is brought in, evicting the set's last line when full.
  bool access(int64_t line) {
    auto found = where_.find(line);
    if (found != where_.end()) {
      if (lru_) move_to_front(found->second, set_of(line));
      return true;
    }
    const int64_t set = set_of(line);
    int64_t slot;
    if (count_[set] < ways_) {
      ++count_[set];
      slot = static_cast<int64_t>(line_.size());
      line_.push_back(-1);
      prev_.push_back(-1);
      next_.push_back(-1);
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
  // The index of the line's set into head_, tail_ and count_.
  int64_t set_of(int64_t line) {
    const int64_t set = line % num_sets_;
    if (!sparse_) return set;
    const auto [entry, added] = set_index_.try_emplace(set, static_cast<int64_t>(head_.size()));
    if (added) {
      head_.push_back(-1);
      tail_.push_back(-1);
      count_.push_back(0);
    }
    return entry->second;
  }
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
  bool lru_, sparse_;
  std::vector<int64_t> line_, prev_, next_, head_, tail_, count_;
  std::unordered_map<int64_t, int64_t> where_, set_index_;
};

Cache make_cache(int64_t num_sets, int64_t ways, const std::string& policy, int64_t accesses) {
  check_at_least(num_sets, 1, "num_sets");
  check_at_least(ways, 1, "ways");
  if (policy != "lru" && policy != "fifo" && policy != "direct") {
    throw py::value_error("policy must be lru, fifo or direct, got " + policy);
  }
  if (policy == "direct" && ways != 1) {
    throw py::value_error("a direct-mapped cache has 1 way, got ways = " + std::to_string(ways));
  }
  return Cache(num_sets, ways, policy == "lru", accesses);
}

// Hits of a line stream (int64 line ids >= 0) in a cache: the textbook interface, used by the tests.
int64_t cache_hits(const py::object& lines_arg, int64_t num_sets, int64_t ways, const std::string& policy) {
  const auto lines = vector_argument<int64_t>(lines_arg, "lines");
  const int64_t* l = lines.data();
  const int64_t n = lines.size();
  for (int64_t i = 0; i < n; ++i) {
    if (l[i] < 0) throw py::value_error("lines must be >= 0, got " + std::to_string(l[i]) + " at " + std::to_string(i));
  }
  Cache cache = make_cache(num_sets, ways, policy, n);
  int64_t hits = 0;
  for (int64_t i = 0; i < n; ++i) hits += cache.access(l[i]);
  return hits;
}

// The gather of a sparse convolution through the cache. Pairs (in_rows, out_rows) are grouped by offset
// (sizes); order "offset" streams them as stored (offset-major), "output" visits every output row's inputs
// in offset order (output-major, a stable sort by output row). An input row lives in line
// row / line_points. Returns (accesses, hits).
py::tuple gather_cache(const py::object& in_rows_arg, const py::object& out_rows_arg, int64_t num_out,
                       const std::string& order, int64_t line_points, int64_t num_sets, int64_t ways,
                       const std::string& policy) {
  const auto in_rows = vector_argument<int32_t>(in_rows_arg, "in_rows");
  const auto out_rows = vector_argument<int32_t>(out_rows_arg, "out_rows");
  if (in_rows.size() != out_rows.size()) {
    throw py::value_error("in_rows and out_rows must have equal length, got " + std::to_string(in_rows.size()) +
                          " and " + std::to_string(out_rows.size()));
  }
  check_at_least(num_out, 0, "num_out");
  if (order != "output" && order != "offset") throw py::value_error("order must be output or offset, got " + order);
  check_at_least(line_points, 1, "line_points");
  const int64_t p = in_rows.size();
  const int32_t* in = in_rows.data();
  const int32_t* out = out_rows.data();
  int64_t rows = 0;  // 1 + the largest output row
  for (int64_t i = 0; i < p; ++i) {
    if (in[i] < 0) {
      throw py::value_error("in_rows must be >= 0, got " + std::to_string(in[i]) + " at " + std::to_string(i));
    }
    if (out[i] < 0 || out[i] >= num_out) {
      throw py::value_error("out_rows must be in [0, num_out = " + std::to_string(num_out) + "), got " +
                            std::to_string(out[i]) + " at " + std::to_string(i));
    }
    rows = std::max<int64_t>(rows, int64_t{out[i]} + 1);
  }
  Cache cache = make_cache(num_sets, ways, policy, p);
  std::vector<int64_t> sequence;
  if (order == "output") {
    sequence.resize(p);
    if (rows <= p) {  // a counting sort, in memory the size of the stream
      std::vector<int64_t> start(rows + 1, 0);
      for (int64_t i = 0; i < p; ++i) ++start[int64_t{out[i]} + 1];
      for (int64_t o = 0; o < rows; ++o) start[o + 1] += start[o];
      for (int64_t i = 0; i < p; ++i) sequence[start[out[i]]++] = i;
    } else {  // few pairs over many rows
      std::iota(sequence.begin(), sequence.end(), 0);
      std::stable_sort(sequence.begin(), sequence.end(), [&](int64_t a, int64_t b) { return out[a] < out[b]; });
    }
  }
  int64_t hits = 0;
  for (int64_t j = 0; j < p; ++j) {
    const int64_t i = order == "output" ? sequence[j] : j;
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
