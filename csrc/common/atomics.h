// Atomics that compile for the host and the device, so that the CPU runs of a portable kernel body exercise the same
// read-modify-write races as the GPU: device atomicCAS / atomicAdd / atomicMin, host __atomic builtins.
#pragma once

#include <cstdint>

#include "common/coords.h"

namespace torchsparse {

// Stores `desired` at *address if it holds `expected`; returns the value found there (== expected on success).
TS_HOST_DEVICE int64_t atomic_cas(int64_t* address, int64_t expected, int64_t desired) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(atomicCAS(reinterpret_cast<unsigned long long*>(address),
                                        static_cast<unsigned long long>(expected),
                                        static_cast<unsigned long long>(desired)));
#else
  __atomic_compare_exchange_n(address, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  return expected;
#endif
}

// *address = min(*address, value); returns the previous value.
TS_HOST_DEVICE int64_t atomic_min(int64_t* address, int64_t value) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(atomicMin(reinterpret_cast<long long*>(address), static_cast<long long>(value)));
#else
  int64_t current = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (value < current &&
         !__atomic_compare_exchange_n(address, &current, value, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
  }
  return current;
#endif
}

// *address += value; returns the previous value.
TS_HOST_DEVICE int64_t atomic_add(int64_t* address, int64_t value) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(atomicAdd(reinterpret_cast<unsigned long long*>(address),
                                        static_cast<unsigned long long>(value)));
#else
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
#endif
}

TS_HOST_DEVICE int32_t atomic_add(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(address, value);
#else
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
#endif
}

// A flag many threads may raise: *address = 1 (relaxed on the host, a plain store of the same value on the device).
TS_HOST_DEVICE void raise_flag(int32_t* address) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<volatile int32_t*>(address) = 1;
#else
  __atomic_store_n(address, 1, __ATOMIC_RELAXED);
#endif
}

}  // namespace torchsparse
