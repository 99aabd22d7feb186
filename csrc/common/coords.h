// Exact packing of (batch, x, y, z) voxel coordinates into one non-negative int64 key, shared by CPU and CUDA.
//
// Layout, high to low bits: 1 zero sign bit | batch 15 bits | x 16 | y 16 | z 16. Each spatial coordinate is
// stored biased by 2^15, so x, y, z may be in [-32768, 32767] and the batch index in [0, 32767]. Every valid
// key is >= 0, which leaves -1 free as the empty-slot marker of the hash tables.
#pragma once

#include <cstdint>

// TS_HOST_DEVICE marks functions and functor members that run on the host and the device; TS_LAMBDA marks a lambda
// body that does (nvcc's --extended-lambda), for the launchers of common/launch.h and common/launch_cuda.cuh.
#if defined(__CUDACC__)
#define TS_HOST_DEVICE __host__ __device__ __forceinline__
#define TS_LAMBDA __host__ __device__
#else
#define TS_HOST_DEVICE inline
#define TS_LAMBDA
#endif

namespace torchsparse {

constexpr int64_t kEmptyKey = -1;
constexpr int64_t kCoordMin = -32768;
constexpr int64_t kCoordMax = 32767;
constexpr int64_t kBatchMax = 32767;

TS_HOST_DEVICE bool coord_in_range(int64_t b, int64_t x, int64_t y, int64_t z) {
  return b >= 0 && b <= kBatchMax && x >= kCoordMin && x <= kCoordMax && y >= kCoordMin &&
         y <= kCoordMax && z >= kCoordMin && z <= kCoordMax;
}

// Callers must check coord_in_range first: out-of-range values would alias other keys.
TS_HOST_DEVICE int64_t pack_coord(int64_t b, int64_t x, int64_t y, int64_t z) {
  return (b << 48) | ((x - kCoordMin) << 32) | ((y - kCoordMin) << 16) | (z - kCoordMin);
}

TS_HOST_DEVICE void unpack_coord(int64_t key, int32_t* out) {
  out[0] = static_cast<int32_t>(key >> 48);
  out[1] = static_cast<int32_t>(((key >> 32) & 0xFFFF) + kCoordMin);
  out[2] = static_cast<int32_t>(((key >> 16) & 0xFFFF) + kCoordMin);
  out[3] = static_cast<int32_t>((key & 0xFFFF) + kCoordMin);
}

// splitmix64 finaliser: spreads neighbouring coordinates over the whole table.
TS_HOST_DEVICE uint64_t mix_key(int64_t key) {
  uint64_t h = static_cast<uint64_t>(key);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

// First probe slot of a key in a table of `capacity` slots (any capacity, no power of two needed).
TS_HOST_DEVICE int64_t home_slot(int64_t key, int64_t capacity) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(mix_key(key), static_cast<uint64_t>(capacity)));
#else
  return static_cast<int64_t>(
      (static_cast<unsigned __int128>(mix_key(key)) * static_cast<uint64_t>(capacity)) >> 64);
#endif
}

// Kernel geometry of one convolution: input site of (output o, offset k) per axis is
// stride * o + base + index_k * dilation, with index_k in [0, kernel_size).
struct KernelGeometry {
  int64_t size[3];
  int64_t stride[3];
  int64_t dilation[3];
  int64_t base[3];
  bool x_fastest;  // offset order: x fastest when the kernel volume is odd, else z fastest

  TS_HOST_DEVICE int64_t volume() const { return size[0] * size[1] * size[2]; }

  // Flat offset of per-axis kernel indices, the inverse of index().
  TS_HOST_DEVICE int64_t flat(const int64_t* idx) const {
    return x_fastest ? idx[0] + size[0] * (idx[1] + size[1] * idx[2]) : idx[2] + size[2] * (idx[1] + size[1] * idx[0]);
  }

  // Per-axis kernel index of flat offset k, in TorchSparse's offset order.
  TS_HOST_DEVICE void index(int64_t k, int64_t* idx) const {
    if (x_fastest) {
      idx[0] = k % size[0];
      idx[1] = (k / size[0]) % size[1];
      idx[2] = k / (size[0] * size[1]);
    } else {
      idx[2] = k % size[2];
      idx[1] = (k / size[2]) % size[1];
      idx[0] = k / (size[2] * size[1]);
    }
  }
};

}  // namespace torchsparse
