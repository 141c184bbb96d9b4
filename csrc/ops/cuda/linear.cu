// CUDA kernels of torchext::linear and torchext::linear_backward.
//
// Forward: ATen's CUDA addmm (called directly, at::cuda::*), which runs
// cuBLASLt with the bias folded into the GEMM epilogue (CUBLASLT_EPILOGUE_BIAS)
// for float32/float16/bfloat16 and cuBLAS otherwise.
// Backward: grad_input = grad_out · W through cuBLAS; grad_weight and grad_bias
// in ONE cuBLASLt call whose BGRADB epilogue reduces grad_out while the GEMM
// reads it, instead of a second pass over grad_out. Where cuBLASLt offers no
// such algorithm (float64, misaligned data, or no heuristic result) the weight
// gradient is a plain GEMM and the bias gradient a reduction.
// CPU reference: cpu/linear.cpp. All work runs on the current stream.
#include "ops/linear_common.h"

#include <ATen/ATen.h>
#include <ATen/CUDAFunctions.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <memory>

namespace torchext {
namespace {

using namespace linear_detail;

#define TORCHEXT_CUBLASLT_CHECK(expr)                                                 \
  do {                                                                                \
    cublasStatus_t status = (expr);                                                   \
    TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "torchext.linear_backward: ", #expr, \
                " failed with cuBLAS status ", static_cast<int>(status));             \
  } while (0)

// Owning handles for cuBLASLt descriptors.
struct MatmulDescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const { cublasLtMatrixLayoutDestroy(d); }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const { cublasLtMatmulPreferenceDestroy(d); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, MatmulDescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PreferenceDeleter>;

Layout make_layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld));
  return Layout(layout);
}

bool lt_data_type(at::ScalarType dtype, cudaDataType_t* type) {
  switch (dtype) {
    case at::kFloat: *type = CUDA_R_32F; return true;
    case at::kHalf: *type = CUDA_R_16F; return true;
    case at::kBFloat16: *type = CUDA_R_16BF; return true;
    default: return false;
  }
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// grad_weight [O, I] = goᵀ · x and grad_bias [O] = Σ_B go, in one cuBLASLt call.
//   go [B, O] and x [B, I], both row-major contiguous.
// cuBLASLt is column-major, so it computes grad_weightᵀ (I × O, ld I) =
// x_cm (I × B, op N) · go_cm (O × B, op T); BGRADB reduces op(B) = go over the
// GEMM's k = B dimension into a vector of n = O entries.
// Returns false, having written nothing, where cuBLASLt cannot do it.
bool weight_and_bias_grad_lt(const at::Tensor& go, const at::Tensor& x, at::Tensor& grad_weight,
                             at::Tensor& grad_bias) {
  cudaDataType_t type;
  if (!lt_data_type(go.scalar_type(), &type)) return false;
  const int64_t batch = go.size(0), out_features = go.size(1), in_features = x.size(1);
  if (batch == 0 || out_features == 0 || in_features == 0) return false;
  if (!aligned16(go) || !aligned16(x) || !aligned16(grad_weight) || !aligned16(grad_bias)) {
    return false;
  }

  const cublasComputeType_t compute =
      go.scalar_type() == at::kFloat && at::globalContext().allowTF32CuBLAS()
          ? CUBLAS_COMPUTE_32F_FAST_TF32
          : CUBLAS_COMPUTE_32F;
  cublasLtMatmulDesc_t raw_desc = nullptr;
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&raw_desc, compute, CUDA_R_32F));
  MatmulDesc desc(raw_desc);
  const cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_T;
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BGRADB;
  void* bias_ptr = grad_bias.data_ptr();
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA,
                                                         &trans_a, sizeof(trans_a)));
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB,
                                                         &trans_b, sizeof(trans_b)));
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                         &epilogue, sizeof(epilogue)));
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(
      desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));

  Layout a = make_layout(type, in_features, batch, in_features);         // x_cm   [I, B]
  Layout b = make_layout(type, out_features, batch, out_features);       // go_cm  [O, B]
  Layout d = make_layout(type, in_features, out_features, in_features);  // gWᵀ [I, O]

  constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  cublasLtMatmulPreference_t raw_pref = nullptr;
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
  Preference pref(raw_pref);
  TORCHEXT_CUBLASLT_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &kWorkspaceBytes, sizeof(kWorkspaceBytes)));

  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle, desc.get(), a.get(), b.get(), d.get(), d.get(), pref.get(), 1, &heuristic, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) return false;

  // The caching allocator makes this free after the first call, and keeps it
  // legal inside CUDA graph capture.
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(heuristic.workspaceSize)}, go.options().dtype(at::kByte));
  const float alpha = 1.0f, beta = 0.0f;
  TORCHEXT_CUBLASLT_CHECK(cublasLtMatmul(
      handle, desc.get(), &alpha, x.data_ptr(), a.get(), go.data_ptr(), b.get(), &beta,
      grad_weight.data_ptr(), d.get(), grad_weight.data_ptr(), d.get(), &heuristic.algo,
      workspace.data_ptr(), heuristic.workspaceSize, at::cuda::getCurrentCUDAStream()));
  return true;
}

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias) {
  check_linear_args(input, weight, bias);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor x = flatten_to_2d(input.dim() == 1 ? input.unsqueeze(0) : input);  // [B, I]
  at::Tensor out = at::empty({x.size(0), weight.size(0)}, input.options());           // [B, O]
  if (bias.has_value() && bias->defined()) {
    at::cuda::addmm_out(out, *bias, x, weight.t());
  } else {
    at::cuda::mm_out(out, x, weight.t());
  }
  return out.view(output_shape(input, weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_backward_args(grad_output, input, weight);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  const at::Tensor go = grad_output.reshape({leading_rows(input), out_features});  // [B, O]
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options());
    at::Tensor grad_input_2d = grad_input.view({leading_rows(input), in_features});
    at::cuda::mm_out(grad_input_2d, go, weight);  // [B, O]·[O, I]
  }
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({out_features}, grad_output.options());

  bool fused = false;
  const at::Tensor x = input.reshape({leading_rows(input), in_features});  // [B, I]
  if (output_mask[1] && output_mask[2]) {
    fused = weight_and_bias_grad_lt(go.contiguous(), x.contiguous(), grad_weight, grad_bias);
  }
  if (!fused) {
    if (output_mask[1]) at::cuda::mm_out(grad_weight, go.t(), x);  // [O, B]·[B, I]
    if (output_mask[2]) at::cuda::sum_out(grad_bias, go, at::IntArrayRef{0});
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
  m.impl("linear", &linear_cuda);
  m.impl("linear_backward", &linear_backward_cuda);
}

}  // namespace torchext
