// CPU kernels of the hashing family: linear probing with atomic compare-and-swap, built in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <limits>

#include "common/checks.h"
#include "common/hash_table.h"
#include "hashing/hashing_cpu.h"

namespace torchsparse {

at::Tensor pack_coords_cpu(const at::Tensor& coords) {
  check_coords(coords, "coords");
  auto c = coords.contiguous();
  const int64_t n = c.size(0);
  auto keys = at::empty({n}, c.options().dtype(at::kLong));
  const int32_t* cp = c.data_ptr<int32_t>();
  int64_t* kp = keys.data_ptr<int64_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int32_t* r = cp + 4 * i;
      if (!coord_in_range(r[0], r[1], r[2], r[3])) {
        bad = true;
        kp[i] = kEmptyKey;
      } else {
        kp[i] = pack_coord(r[0], r[1], r[2], r[3]);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad, "coords out of the packable range: batch must be in [0, ", kBatchMax, "] and x, y, z in [",
              kCoordMin, ", ", kCoordMax, "]");
  return keys;
}

at::Tensor unpack_coords_cpu(const at::Tensor& keys) {
  auto k = checked_keys(keys, "keys");
  const int64_t n = k.size(0);
  auto coords = at::empty({n, 4}, k.options().dtype(at::kInt));
  const int64_t* kp = k.data_ptr<int64_t>();
  int32_t* cp = coords.data_ptr<int32_t>();
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) unpack_coord(kp[i], cp + 4 * i);
  });
  return coords;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hash_build_cpu(const at::Tensor& keys) {
  auto k = checked_keys(keys, "keys");
  const int64_t n = k.size(0);
  const int64_t capacity = 2 * n + 16;
  auto table_keys = at::full({capacity}, kEmptyKey, k.options());
  auto table_values = at::full({capacity}, std::numeric_limits<int64_t>::max(), k.options());
  int64_t* tk = table_keys.data_ptr<int64_t>();
  int64_t* tv = table_values.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  std::atomic<int64_t> unique{0};
  at::parallel_for(0, n, 2048, [&](int64_t lo, int64_t hi) {
    int64_t inserted = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t key = kp[i];
      int64_t slot = home_slot(key, capacity);
      while (true) {
        int64_t seen = kEmptyKey;
        if (__atomic_compare_exchange_n(&tk[slot], &seen, key, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
          ++inserted;
          break;
        }
        if (seen == key) break;
        slot = slot + 1 == capacity ? 0 : slot + 1;
      }
      // Duplicate keys keep their smallest row, so the table does not depend on thread timing.
      int64_t current = __atomic_load_n(&tv[slot], __ATOMIC_RELAXED);
      while (i < current &&
             !__atomic_compare_exchange_n(&tv[slot], &current, i, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
      }
    }
    unique += inserted;
  });
  return {table_keys, table_values, at::scalar_tensor(unique.load(), k.options())};
}

at::Tensor hash_query_cpu(const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& queries) {
  check_keys(queries, "queries");
  const HashTableView table = make_table_view(table_keys, table_values);
  check_same_device(queries, "queries", table_keys, "table_keys");
  auto q = queries.contiguous();
  const int64_t n = q.size(0);
  auto out = at::empty({n}, q.options());
  const int64_t* qp = q.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) op[i] = table.find(qp[i]);
  });
  return out;
}

TORCH_LIBRARY_IMPL(torchsparse, CPU, m) {
  m.impl("pack_coords", &pack_coords_cpu);
  m.impl("unpack_coords", &unpack_coords_cpu);
  m.impl("hash_build", &hash_build_cpu);
  m.impl("hash_query", &hash_query_cpu);
}

}  // namespace torchsparse
