// CPU kernels of the hashing family that other families' CPU kernels call.
#pragma once

#include <ATen/core/Tensor.h>

namespace torchsparse {

// keys int64 (N,), each >= 0 -> int32 (N, 4) coordinates.
at::Tensor unpack_coords_cpu(const at::Tensor& keys);

}  // namespace torchsparse
