// ReLU's backward on bfloat16 and float16 CPU tensors, for the ATen steps of
// the mixed precisions: ATen's threshold_backward runs element by element for
// these dtypes (measured about 70 times slower than its float32 kernel on a
// 2-core Sapphire Rapids), so at the widths where the ATen step runs it costs
// as much as a GEMM.
#pragma once

#include <ATen/core/Tensor.h>

namespace torchext::train::mixed {

// Whether relu_backward_ serves (grad, a): contiguous bfloat16 or float16 CPU
// tensors of one shape and dtype.
bool relu_backward_applies(const at::Tensor& grad, const at::Tensor& a);

// grad = a <= 0 ? 0 : grad, in place, bit for bit what
// threshold_backward(grad, a, 0) gives (a NaN in `a` keeps the gradient).
void relu_backward_(const at::Tensor& grad, const at::Tensor& a);

}  // namespace torchext::train::mixed
