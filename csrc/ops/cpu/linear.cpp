// CPU kernels of torchext::linear and torchext::linear_backward.
//
// The GEMMs go to the vendor BLAS (MKL or OpenBLAS) through ATen's CPU kernels,
// called directly (at::cpu::*) so no second trip through the dispatcher is paid.
// Forward folds the bias into the GEMM: the output is seeded with the broadcast
// bias and the GEMM accumulates into it (beta = 1), one pass over the output.
// Backward: grad_input = grad_out · W, grad_weight = grad_outᵀ · X (both GEMMs),
// grad_bias = the column sums of grad_out (one vectorised reduction; BLAS has
// no epilogue to hang it on).
#include "ops/linear_common.h"

#include <ATen/ATen.h>
#include <ATen/CPUFunctions.h>
#include <torch/library.h>

namespace torchext {
namespace {

using namespace linear_detail;

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  const at::Tensor x = flatten_to_2d(input.dim() == 1 ? input.unsqueeze(0) : input);  // [B, I]
  at::Tensor out = at::empty({x.size(0), weight.size(0)}, input.options());           // [B, O]
  if (bias.has_value() && bias->defined()) {
    at::cpu::addmm_out(out, *bias, x, weight.t());
  } else {
    at::cpu::mm_out(out, x, weight.t());
  }
  return input.dim() == 2 ? out : out.view(output_shape(input, weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight);
  const int64_t out_features = weight.size(0);
  // 2-D tensors are used as they are: a view costs a tensor allocation, which
  // shows at small sizes.
  const at::Tensor go =
      flatten_to_2d(grad_output.dim() == 1 ? grad_output.unsqueeze(0) : grad_output);  // [B, O]
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options());
    at::Tensor grad_input_2d =
        input.dim() == 2 ? grad_input : grad_input.view({leading_rows(input), weight.size(1)});
    at::cpu::mm_out(grad_input_2d, go, weight);  // [B, O]·[O, I]
  }
  if (output_mask[1]) {
    const at::Tensor x = flatten_to_2d(input.dim() == 1 ? input.unsqueeze(0) : input);  // [B, I]
    grad_weight = at::empty(weight.sizes(), weight.options());
    at::cpu::mm_out(grad_weight, go.t(), x);  // [O, B]·[B, I]
  }
  if (output_mask[2]) {
    grad_bias = at::empty({out_features}, grad_output.options());
    at::cpu::sum_out(grad_bias, go, /*dim=*/at::IntArrayRef{0});
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace torchext
