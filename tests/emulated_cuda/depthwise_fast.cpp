// The CUDA depthwise fast paths (the section of cuda/conv_cuda.cu between
// "depthwise fast paths" and "end of depthwise fast paths", kernels and launch
// shapes) compiled for the CPU: each block runs as blockDim std::threads with a
// std::barrier for __syncthreads, so that their index arithmetic, grid-stride
// loops and reductions are tested on machines without a GPU
// (tests/test_conv_cuda_emulation.py builds this with the section spliced in
// as depthwise_fast_section.inc). Float and double only: at::opmath_type is
// the identity here.
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
static dim3 gridDim, blockDim;
static thread_local dim3 blockIdx, threadIdx;
static std::barrier<>* block_barrier = nullptr;
static double shuffle_lanes[1024];

static void __syncthreads() { block_barrier->arrive_and_wait(); }

// every thread of the block calls it together (as the kernels do), so a
// block-wide barrier stands in for the warp's
template <typename T>
static T __shfl_down_sync(unsigned, T value, int offset) {
  const unsigned tid = threadIdx.x + threadIdx.y * blockDim.x;
  shuffle_lanes[tid] = double(value);
  __syncthreads();
  const T result = (tid % 32) + offset < 32 ? T(shuffle_lanes[tid + offset]) : value;
  __syncthreads();
  return result;
}
static int min(int a, int b) { return a < b ? a : b; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace at {
template <typename T>
using opmath_type = T;
}

#include "visionops/conv.h"

namespace visionops {
namespace {
constexpr int kThreads = 256;
int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20));
}
#include "depthwise_fast_section.inc"
}  // namespace
}  // namespace visionops

namespace {

unsigned max_grid_x = 0, max_grid_y = 0;  // 0: the grid the launch asks for

// one block after the other, each block's threads at once
struct EmulatedLaunch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, dim3 block, Args... args) const {
    if (max_grid_x) grid.x = std::min(grid.x, max_grid_x);
    if (max_grid_y) grid.y = std::min(grid.y, max_grid_y);
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y;
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            blockIdx = dim3(bx, by);
            threadIdx = dim3(t % block.x, t / block.x);
            kernel(args...);
          });
        }
        for (auto& th : pool) th.join();
      }
    }
  }
};

template <typename T>
int run(const int64_t* geom, int channels_last, int activation, const T* input, const T* weight, const T* bias,
        const T* grad, T* output, T* grad_input, T* grad_weight) {
  using namespace visionops;
  ConvGeometry g{geom[0],  geom[1],  geom[2],  geom[3],  geom[4],  geom[5],  geom[6],  geom[7],  geom[8], geom[9],
                 geom[10], geom[11], geom[12], geom[13], geom[14], geom[15], geom[16], geom[17], geom[18]};
  const bool cl = channels_last != 0;
  if (!DwGeom32::fits(g, cl)) return 0;
  const DwGeom32 g32(g);
  dw_forward_fast<T>(g32, g.N, cl, input, weight, bias, output, activation, EmulatedLaunch{});
  dw_grad_input_fast<T>(g32, g.N, cl, grad, weight, grad_input, EmulatedLaunch{});
  const DwWeightPlan plan(g32, g.N, cl);
  std::vector<T> partial(plan.partial_rows * plan.weights);
  dw_grad_weight_fast<T>(g32, g.N, cl, plan, grad, input, partial.data(), grad_weight, EmulatedLaunch{});
  return 1;
}

}  // namespace

// geom: ConvGeometry's 19 fields in order; tensors contiguous in the layout
// (NCHW or channels_last); returns 0 when the fast paths do not apply
extern "C" int depthwise_fast_emulated(int is_double, const int64_t* geom, int channels_last, int activation,
                                       unsigned grid_x_limit, unsigned grid_y_limit, const void* input,
                                       const void* weight, const void* bias, const void* grad, void* output,
                                       void* grad_input, void* grad_weight) {
  max_grid_x = grid_x_limit;
  max_grid_y = grid_y_limit;
  if (is_double)
    return run<double>(geom, channels_last, activation, static_cast<const double*>(input),
                       static_cast<const double*>(weight), static_cast<const double*>(bias),
                       static_cast<const double*>(grad), static_cast<double*>(output),
                       static_cast<double*>(grad_input), static_cast<double*>(grad_weight));
  return run<float>(geom, channels_last, activation, static_cast<const float*>(input),
                    static_cast<const float*>(weight), static_cast<const float*>(bias),
                    static_cast<const float*>(grad), static_cast<float*>(output), static_cast<float*>(grad_input),
                    static_cast<float*>(grad_weight));
}
