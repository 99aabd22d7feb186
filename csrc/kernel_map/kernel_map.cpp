// Schemas of the kernel-map family. A convolution connects output site o and input site
//   stride * o + base + index_k * dilation            (per axis, index_k in [0, kernel_size))
// for every kernel offset k, in TorchSparse's offset order (x fastest when the kernel volume is odd, else z
// fastest). Submanifold, both strided semantics, transposed and generative maps are all instances of this.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torchsparse, m) {
  // Output-stationary neighbour table. The input sites are given as a sorted index: sorted_keys int64 (N,)
  // ascending, unique packed keys (pack_coords), and sorted_rows int64 (N,) the input row of each key.
  // out_coords int32 (M, 4). Returns int32 (M, K): the input row of (output m, offset k), or -1 where absent.
  // symmetric: out_coords are the indexed input sites themselves with stride 1 and a centred odd kernel
  // (submanifold); then only half the offsets are searched, the centre is the identity and offset K-1-k is
  // offset k mirrored.
  m.def(
      "kernel_map(Tensor sorted_keys, Tensor sorted_rows, Tensor out_coords, int[] kernel_size, int[] stride, "
      "int[] dilation, int[] base, bool symmetric=False) -> Tensor");
  // nbmap int32 (M, K) -> in_rows int32 (P,), out_rows int32 (P,) of every present entry, grouped by offset
  // and ascending in output row within an offset, and sizes int64 (K,) = entries per offset, a CPU tensor for an
  // nbmap on any device.
  m.def("kernel_map_pairs(Tensor nbmap) -> (Tensor in_rows, Tensor out_rows, Tensor sizes)");
  // Output sites of a strided convolution and its map: unique o with stride * o + base + index_k * dilation
  // equal to an input site for some k, and 0 <= o < upper per axis when upper is given. coords int32 (N, 4),
  // unique -> coords int32 (M, 4) sorted by (batch, x, y, z), and nbmap int32 (M, K): the input row of
  // (output m, offset k), -1 where absent (the output-stationary kernel map of this convolution).
  m.def(
      "strided_coords(Tensor coords, int[] kernel_size, int[] stride, int[] dilation, int[] base, "
      "int[]? upper) -> (Tensor coords, Tensor nbmap)");
  // Output sites of a generative transposed convolution: unique stride * c + base + index_k * dilation over
  // input sites c and offsets k. coords int32 (N, 4), unique -> coords int32 (M, 4) sorted by (batch, x, y, z),
  // and nbmap int32 (N, K): the output row reached from (input n, offset k) (the map of the forward strided
  // conv from the new sites back to the inputs, stationary over the inputs).
  m.def(
      "generative_coords(Tensor coords, int[] kernel_size, int[] stride, int[] dilation, int[] base) "
      "-> (Tensor coords, Tensor nbmap)");
}
