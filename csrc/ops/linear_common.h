// Argument checks and shape plumbing shared by the Linear kernels of every
// backend (cpu/linear.cpp, cuda/linear.cu).
//
// Shape legend: B = all leading dims of the input flattened, I = in_features,
// O = out_features. Inputs are [*, I] (or 1-D [I]), weight [O, I], bias [O].
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <vector>

namespace torchext::linear_detail {

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected a floating-point ", name,
              ", got ", t.scalar_type(), " (integer and complex tensors are not supported)");
}

inline void check_same_dtype_and_device(const char* op, const char* name, const at::Tensor& t,
                                        const at::Tensor& input) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " is ", t.scalar_type(),
              " but input is ", input.scalar_type(), "; they must have the same dtype");
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; they must be on the same device");
}

// The checks torch.nn.functional.linear makes, with messages that name the
// offending shapes, dtypes and devices.
inline void check_linear_args(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias) {
  constexpr const char* op = "torchext.linear";
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
              weight.sizes());
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension, got a 0-d tensor");
  check_floating(op, "input", input);
  check_floating(op, "weight", weight);
  check_same_dtype_and_device(op, "weight", weight, input);
  const int64_t in_features = input.size(-1);
  TORCH_CHECK(in_features == weight.size(1), op, ": input and weight shapes cannot be multiplied (",
              input.numel() / std::max<int64_t>(in_features, 1), "x", in_features, " and ",
              weight.size(1), "x", weight.size(0), "): the input's last dimension (", in_features,
              ") must equal in_features (", weight.size(1), ")");
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_and_device(op, "bias", *bias, input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape [",
                weight.size(0), "] (out_features), got ", bias->sizes());
  }
}

inline void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight) {
  constexpr const char* op = "torchext.linear_backward";
  check_linear_args(input, weight, c10::nullopt);
  check_same_dtype_and_device(op, "grad_output", grad_output, input);
  std::vector<int64_t> expected(input.sizes().begin(), input.sizes().end());
  expected.back() = weight.size(0);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
              ": grad_output must have shape ", at::IntArrayRef(expected),
              " (the output of linear), got ", grad_output.sizes());
}

// B: the product of all dims but the last (1 for a 1-D tensor). Spelled out rather
// than left to reshape's -1, which cannot infer B when the last dim is 0.
inline int64_t leading_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

// [*, C] -> [B, C]; a view whenever the strides allow it.
inline at::Tensor flatten_to_2d(const at::Tensor& t) {
  return t.dim() == 2 ? t : t.reshape({leading_rows(t), t.size(-1)});
}

// The output shape of linear: input's leading dims, then O.
inline std::vector<int64_t> output_shape(const at::Tensor& input, int64_t out_features) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out_features;
  return shape;
}

}  // namespace torchext::linear_detail
