// The CUDA depthwise fast paths (the section of cuda/conv_cuda.cu between
// "depthwise fast paths" and "end of depthwise fast paths": kernels and launch
// shapes) compiled for the CPU through emulation.h, so that their index
// arithmetic, grid-stride loops and reductions are tested on machines without a
// GPU (tests/test_conv_cuda_emulation.py splices the section in as
// depthwise_fast_section.inc).
#include <cstdlib>
#include <string>

#include "emulation.h"

#define VISIONOPS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

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

template <typename T>
int run(const int64_t* geom, int channels_last, int activation, const T* input, const T* weight, const T* bias,
        const T* grad, T* output, T* grad_input, T* grad_weight) {
  using namespace visionops;
  ConvGeometry g{geom[0],  geom[1],  geom[2],  geom[3],  geom[4],  geom[5],  geom[6],  geom[7],  geom[8], geom[9],
                 geom[10], geom[11], geom[12], geom[13], geom[14], geom[15], geom[16], geom[17], geom[18]};
  const bool cl = channels_last != 0;
  if (!DwGeom32::fits(g, cl)) return 0;
  const DwGeom32 g32(g);
  // the [KH*KW, OC] transpose that conv_cuda.cu makes where a kernel reads it
  const int64_t taps = g.KH * g.KW;
  std::vector<T> weight_taps(g.OC * taps);
  for (int64_t oc = 0; oc < g.OC; ++oc)
    for (int64_t t = 0; t < taps; ++t) weight_taps[t * g.OC + oc] = weight[oc * taps + t];
  dw_forward_fast<T>(g32, g.N, cl, input, weight, weight_taps.data(), bias, output, activation, emulation::Launch{});
  dw_grad_input_fast<T>(g32, g.N, cl, grad, weight, weight_taps.data(), grad_input, emulation::Launch{});
  const DwWeightPlan plan(g32, g.N, cl);
  std::vector<T> partial(plan.partial_rows * plan.weights);
  dw_grad_weight_fast<T>(g32, g.N, cl, plan, grad, input, partial.data(), grad_weight, emulation::Launch{});
  return 1 | (dw_strips_apply(g32, g.N, cl) ? 2 : 0) | (dw_grad_input_strips_apply(g32, g.N, cl) ? 4 : 0);
}

}  // namespace

// geom: ConvGeometry's 19 fields in order; tensors contiguous in the layout
// (NCHW or channels_last), the weight [OC, KH*KW]; returns 0 when the fast paths
// do not apply, else 1 + 2 (the forward took the strip kernel) + 4 (the input
// gradient did).
extern "C" int depthwise_fast_emulated(int is_double, const int64_t* geom, int channels_last, int activation,
                                       unsigned grid_x_limit, unsigned grid_y_limit, const void* input,
                                       const void* weight, const void* bias, const void* grad, void* output,
                                       void* grad_input, void* grad_weight) {
  emulation::max_grid_x = grid_x_limit;
  emulation::max_grid_y = grid_y_limit;
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
