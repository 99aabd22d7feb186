// Read-only view of a hash table built by hash_build, for CPU kernels of other families.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/coords.h"

namespace torchsparse {

at::Tensor unpack_coords_cpu(const at::Tensor& keys);

struct HashTableView {
  const int64_t* keys;
  const int64_t* values;
  int64_t capacity;

  HashTableView(const at::Tensor& table_keys, const at::Tensor& table_values);

  // Row stored for `key`, or -1 when absent. Negative keys are never stored.
  int64_t find(int64_t key) const {
    if (key < 0) return -1;
    int64_t slot = home_slot(key, capacity);
    while (true) {
      const int64_t k = keys[slot];
      if (k == key) return values[slot];
      if (k == kEmptyKey) return -1;
      slot = slot + 1 == capacity ? 0 : slot + 1;
    }
  }
};

}  // namespace torchsparse
