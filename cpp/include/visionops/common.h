// Macros and small helpers shared by the CPU (.cpp) and CUDA (.cu) sources.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VISIONOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VISIONOPS_HOST_DEVICE inline
#endif

namespace visionops {

// Coordinates further out than this cannot address a real feature map; clamping
// them before any float -> int conversion keeps huge or infinite boxes from
// triggering undefined behaviour (int overflow) while leaving every value a real
// network produces untouched.
constexpr double kMaxCoordinate = 1073741824.0;  // 2^30

template <typename T>
VISIONOPS_HOST_DEVICE T clamp_coordinate(T v) {
  return v < T(-kMaxCoordinate) ? T(-kMaxCoordinate) : (v > T(kMaxCoordinate) ? T(kMaxCoordinate) : v);
}

template <typename T>
VISIONOPS_HOST_DEVICE bool is_finite_value(T v) {
  // true for finite numbers, false for NaN and +-inf, without <cmath> in device code
  return v == v && v - v == T(0);
}

}  // namespace visionops
