// Schemas of the hashing family: exact packing of voxel coordinates into int64 keys and an open-addressing hash
// table over such keys, held as two tensors so that it can be cached and passed through ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // coords int32 (N, 4) as (batch, x, y, z) -> int64 (N,) keys, each >= 0 (layout in common/coords.h).
  m.def("pack_coords(Tensor coords) -> Tensor");
  // keys int64 (N,), each >= 0 -> int32 (N, 4) coordinates.
  m.def("unpack_coords(Tensor keys) -> Tensor");
  // keys int64 (N,) >= 0 -> table_keys int64 (2N + 16,) with -1 for empty slots, table_values int64 (2N + 16,)
  // holding the smallest row of each key, and num_unique int64 () = number of distinct keys.
  m.def("hash_build(Tensor keys) -> (Tensor table_keys, Tensor table_values, Tensor num_unique)");
  // queries int64 (M,) -> int64 (M,) row of each query in the table, -1 where absent (negative queries too).
  m.def("hash_query(Tensor table_keys, Tensor table_values, Tensor queries) -> Tensor");
}
