// Read-only view of an open-addressing hash table built by hash_build (two int64 tensors: keys with -1 in empty
// slots, and the row stored for each key), for the kernels of every family that looks packed keys up.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"
#include "common/coords.h"

namespace torchsparse {

// hash_build's table size for n keys: kHashCapacityScale * n + kHashCapacityPad slots, so the load factor stays
// <= 1/2 and the table never fills. torchsparse._C exposes both numbers to Python (the fake kernel's shape).
constexpr int64_t kHashCapacityScale = 2;
constexpr int64_t kHashCapacityPad = 16;

struct HashTableView {
  const int64_t* keys;
  const int64_t* values;
  int64_t capacity;

  // Row stored for `key`, or -1 when absent. Negative keys are never stored. Probing stops after `capacity` slots,
  // so a table without an empty slot (which hash_build never makes, but a caller can pass) cannot loop forever.
  TS_HOST_DEVICE int64_t find(int64_t key) const {
    if (key < 0) return -1;
    int64_t slot = home_slot(key, capacity);
    for (int64_t probe = 0; probe < capacity; ++probe) {
      const int64_t k = keys[slot];
      if (k == key) return values[slot];
      if (k == kEmptyKey) return -1;
      slot = slot + 1 == capacity ? 0 : slot + 1;
    }
    return -1;
  }
};

// The view of (table_keys, table_values), checked: both int64 (capacity,), capacity >= 1, on one device. The
// tensors must outlive the view; non-contiguous ones are rejected rather than copied for that reason.
inline HashTableView make_table_view(const at::Tensor& table_keys, const at::Tensor& table_values) {
  check_keys(table_keys, "table_keys");
  check_keys(table_values, "table_values");
  check_same_device(table_keys, "table_keys", table_values, "table_values");
  TORCH_CHECK_VALUE(table_keys.size(0) == table_values.size(0) && table_keys.size(0) > 0,
                    "table_keys and table_values must have the same non-zero length, got ", table_keys.size(0),
                    " and ", table_values.size(0));
  TORCH_CHECK_VALUE(table_keys.is_contiguous() && table_values.is_contiguous(),
                    "table_keys and table_values must be contiguous (as hash_build returns them)");
  return {table_keys.data_ptr<int64_t>(), table_values.data_ptr<int64_t>(), table_keys.size(0)};
}

}  // namespace torchsparse
