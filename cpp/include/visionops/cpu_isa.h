// Run-time choice between the builds of a CPU kernel file: a `<family>_cpu_kernels.inc`
// is compiled three times by its .cpp, into namespaces <prefix>_generic,
// <prefix>_avx2 (under `#pragma GCC target("avx2,fma")`) and <prefix>_avx512,
// and VISIONOPS_ISA_KERNEL picks the best one this CPU runs. Results of the
// variants differ only by FMA contraction and vector blocking; one machine
// always runs the same variant.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VISIONOPS_X86_VARIANTS 1
#else
#define VISIONOPS_X86_VARIANTS 0
#endif

#include <cstdlib>
#include <cstring>

namespace visionops {

// VISIONOPS_CPU_ISA=generic or avx2 caps the variant used (read once), so that
// the tests run every variant on one machine; unset (or avx512): the best.
inline int cpu_isa_cap() {
  static const int cap = [] {
    const char* v = std::getenv("VISIONOPS_CPU_ISA");
    if (v == nullptr) return 2;
    if (std::strcmp(v, "generic") == 0) return 0;
    if (std::strcmp(v, "avx2") == 0) return 1;
    return 2;
  }();
  return cap;
}

inline bool cpu_has_avx2() {
#if VISIONOPS_X86_VARIANTS
  static const bool has = cpu_isa_cap() >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

inline bool cpu_has_avx512() {
#if VISIONOPS_X86_VARIANTS
  static const bool has = cpu_isa_cap() >= 2 && cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

}  // namespace visionops

// &<prefix>_<isa>::fn<template args>: AVX2 or generic (..._KERNEL), or also
// AVX-512 (..._KERNEL_WIDE).
#if VISIONOPS_X86_VARIANTS
#define VISIONOPS_ISA_KERNEL(prefix, fn, ...) \
  (::visionops::cpu_has_avx2() ? &prefix##_avx2::fn<__VA_ARGS__> : &prefix##_generic::fn<__VA_ARGS__>)
#define VISIONOPS_ISA_KERNEL_WIDE(prefix, fn, ...)                                     \
  (::visionops::cpu_has_avx512() ? &prefix##_avx512::fn<__VA_ARGS__> \
                                 : VISIONOPS_ISA_KERNEL(prefix, fn, __VA_ARGS__))
#else
#define VISIONOPS_ISA_KERNEL(prefix, fn, ...) (&prefix##_generic::fn<__VA_ARGS__>)
#define VISIONOPS_ISA_KERNEL_WIDE(prefix, fn, ...) (&prefix##_generic::fn<__VA_ARGS__>)
#endif
