// Portable kernels of the hashing family: per-element bodies (TS_HOST_DEVICE functors) and the ops written once over
// a launcher (common/launch.h on the CPU, common/launch_cuda.cuh on CUDA), so that the CPU suite runs the GPU's code.
#pragma once

#include <ATen/ATen.h>

#include <limits>

#include "common/atomics.h"
#include "common/checks.h"
#include "common/coords.h"
#include "common/hash_table.h"

namespace torchsparse {

struct PackBody {
  const int32_t* coords;
  int64_t* keys;
  int32_t* out_of_range;  // raised when a row is outside the packable range (its key is then -1)

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int32_t* r = coords + 4 * i;
    if (coord_in_range(r[0], r[1], r[2], r[3])) {
      keys[i] = pack_coord(r[0], r[1], r[2], r[3]);
    } else {
      keys[i] = kEmptyKey;
      raise_flag(out_of_range);
    }
  }
};

struct UnpackBody {
  const int64_t* keys;
  int32_t* coords;

  TS_HOST_DEVICE void operator()(int64_t i) const { unpack_coord(keys[i], coords + 4 * i); }
};

// Inserts keys[i] by linear probing with compare-and-swap, then keeps the smallest row of equal keys (atomic min),
// so the table does not depend on thread timing. The capacity exceeds the number of keys: a slot is always found.
struct InsertBody {
  int64_t* table_keys;
  int64_t* table_values;
  int64_t capacity;
  const int64_t* keys;

  TS_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t key = keys[i];
    int64_t slot = home_slot(key, capacity);
    for (int64_t probe = 0; probe < capacity; ++probe) {
      const int64_t seen = atomic_cas(&table_keys[slot], kEmptyKey, key);
      if (seen == kEmptyKey || seen == key) {
        atomic_min(&table_values[slot], i);
        return;
      }
      slot = slot + 1 == capacity ? 0 : slot + 1;
    }
  }
};

struct QueryBody {
  HashTableView table;
  const int64_t* queries;
  int64_t* rows;

  TS_HOST_DEVICE void operator()(int64_t i) const { rows[i] = table.find(queries[i]); }
};

template <typename Launch>
at::Tensor pack_coords_with(const at::Tensor& coords, const Launch& launch) {
  check_coords(coords, "coords");
  auto c = coords.contiguous();
  auto keys = at::empty({c.size(0)}, c.options().dtype(at::kLong));
  auto out_of_range = at::zeros({}, c.options());
  launch(c.size(0), PackBody{c.data_ptr<int32_t>(), keys.data_ptr<int64_t>(), out_of_range.data_ptr<int32_t>()});
  TORCH_CHECK_VALUE(out_of_range.item<int32_t>() == 0, "coords out of the packable range: batch must be in [0, ",
                    kBatchMax, "] and x, y, z in [", kCoordMin, ", ", kCoordMax, "]");
  return keys;
}

template <typename Launch>
at::Tensor unpack_coords_with(const at::Tensor& keys, const Launch& launch) {
  auto k = checked_keys(keys, "keys");
  auto coords = at::empty({k.size(0), 4}, k.options().dtype(at::kInt));
  launch(k.size(0), UnpackBody{k.data_ptr<int64_t>(), coords.data_ptr<int32_t>()});
  return coords;
}

// Capacity 2N + 16 (common/hash_table.h): load factor <= 1/2, never full.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> hash_build_with(const at::Tensor& keys, const Launch& launch) {
  auto k = checked_keys(keys, "keys");
  const int64_t capacity = checked_mul(kHashCapacityScale, k.size(0), "hash table capacity") + kHashCapacityPad;
  auto table_keys = at::full({capacity}, kEmptyKey, k.options());
  auto table_values = at::full({capacity}, std::numeric_limits<int64_t>::max(), k.options());
  launch(k.size(0), InsertBody{table_keys.data_ptr<int64_t>(), table_values.data_ptr<int64_t>(), capacity,
                               k.data_ptr<int64_t>()});
  // Distinct keys = occupied slots: a reduction on the keys' device, no host synchronisation.
  auto num_unique = table_keys.ne(kEmptyKey).sum();
  return {table_keys, table_values, num_unique};
}

template <typename Launch>
at::Tensor hash_query_with(const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& queries,
                           const Launch& launch) {
  check_keys(queries, "queries");
  const HashTableView table = make_table_view(table_keys, table_values);
  check_same_device(queries, "queries", table_keys, "table_keys");
  auto q = queries.contiguous();
  auto rows = at::empty({q.size(0)}, q.options());
  launch(q.size(0), QueryBody{table, q.data_ptr<int64_t>(), rows.data_ptr<int64_t>()});
  return rows;
}

}  // namespace torchsparse
