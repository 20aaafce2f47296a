// CUDA execution emulated on the CPU, for testing kernels on machines without a
// GPU: a grid runs one block after the other, each block as blockDim
// std::threads; __syncthreads is a block-wide std::barrier and __shfl_down_sync
// a warp-wide one (so a warp may shuffle on its own, as in a block reduction's
// second stage); `__shared__` variables are statics, shared by the block's
// threads, and dynamic shared memory is one buffer per launch. Kernels must be
// written for float or double (at::opmath_type is the identity here). Include
// this, then the kernels' source, inside namespace visionops { namespace { ... } }
// wrapped by the test's own file.
#pragma once

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#define VISIONOPS_CUDA_EMULATION 1

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

namespace emulation {
inline dim3 grid_dim, block_dim;
inline thread_local dim3 block_idx, thread_idx;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<double> lanes;                  // shuffle exchange, one slot per thread
inline std::vector<double> dynamic_shared_buffer;  // 8-byte aligned
inline unsigned max_grid_x = 0, max_grid_y = 0;    // 0: the grid the launch asks for

inline unsigned thread_rank() { return thread_idx.x + thread_idx.y * block_dim.x; }

template <typename Body>
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, Body body) {
  if (max_grid_x) grid.x = std::min(grid.x, max_grid_x);
  if (max_grid_y) grid.y = std::min(grid.y, max_grid_y);
  grid_dim = grid;
  block_dim = block;
  const unsigned threads = block.x * block.y;
  lanes.assign(threads, 0.0);
  dynamic_shared_buffer.assign(shared_bytes / sizeof(double) + 1, 0.0);
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> barrier(threads);
      block_barrier = &barrier;
      warp_barriers.clear();
      for (unsigned w = 0; w * 32 < threads; ++w) {
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w * 32)));
      }
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          block_idx = dim3(bx, by);
          thread_idx = dim3(t % block.x, t / block.x);
          body();
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}

// launch(kernel, grid, block, args...)
struct Launch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, dim3 block, Args... args) const {
    run_grid(grid, block, 0, [&] { kernel(args...); });
  }
};

// launch(kernel, grid, block, shared bytes, args...)
struct LaunchShared {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes, Args... args) const {
    run_grid(grid, block, shared_bytes, [&] { kernel(args...); });
  }
};
}  // namespace emulation

#define gridDim (emulation::grid_dim)
#define blockDim (emulation::block_dim)
#define blockIdx (emulation::block_idx)
#define threadIdx (emulation::thread_idx)

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }

// every lane of the warp calls it together, as on the GPU with a full mask
template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  const unsigned tid = emulation::thread_rank();
  auto& warp = *emulation::warp_barriers[tid / 32];
  emulation::lanes[tid] = double(value);
  warp.arrive_and_wait();
  const unsigned warp_size = std::min(32u, emulation::block_dim.x * emulation::block_dim.y - tid / 32 * 32);
  const T result = (tid % 32) + offset < warp_size ? T(emulation::lanes[tid + offset]) : value;
  warp.arrive_and_wait();
  return result;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace at {
template <typename T>
using opmath_type = T;
}
