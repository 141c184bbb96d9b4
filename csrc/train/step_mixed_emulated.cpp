// The emulated mixed-precision step on the CPU (see mixed_step.h): float32
// workspaces holding compute-dtype values, float32 BLAS GEMMs over them, and the
// rounding kernels of mixed_kernels.h where autocast's compute-dtype ops round.
//
// forward:  z_l = a_{l-1} · W_lᵀ (BLAS, rounded operands), then
//           z_l = R(z_l + b_l) and a_l = R(act(z_l)) in one pass
// loss:     float32 value, and R(scale · dL/da_L) in the same pass
// backward: dL/dz_l = R(act'(R(dL/da_l))) and the bias gradient R(Σ dL/dz_l) in
//           one pass, then dW_l = dL/dz_lᵀ · a_{l-1} and dL/da_{l-1} = dL/dz_l · W_l
//           (BLAS); dW_l is rounded by the update, dL/da_{l-1} by the next pass.
#include "train/cpu_gemm.h"
#include "train/mixed_kernels.h"
#include "train/mixed_step.h"

namespace torchext::train {
namespace {

float* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace

at::Tensor MixedStep::forward_emulated(const at::Tensor& x) {
  const int64_t rows = x.size(0);
  int64_t in = x.size(1);
  mixed::round_to(compute_dtype_, x.const_data_ptr<float>(), ptr(input_), rows * in);
  const float* input = ptr(input_);
  for (size_t l = 0; l < compute_.layers.size(); ++l) {
    const DenseLayer& layer = compute_.layers[l];
    const int64_t out = compute_.width(l);
    float* a = ptr(ws_.out[l]);
    float* z = ws_.pre[l].defined() ? ptr(ws_.pre[l]) : a;
    cpu::gemm<float>(false, true, rows, out, in, input, in, ptr(layer.weight), in, z, out);
    mixed::bias_activation(compute_dtype_, z, ptr(layer.bias), rows, out, layer.activation, a);
    input = a;
    in = out;
  }
  return ws_.out.back().narrow(0, 0, rows);
}

void MixedStep::forward_backward_emulated(const Model& model, const at::Tensor& x,
                                          const at::Tensor& y, bool backward) {
  const int64_t rows = x.size(0);
  const size_t depth = compute_.layers.size();
  const float* output = ptr(forward_emulated(x));
  float* grad_out = backward ? ptr(ws_.grad[depth - 1]) : nullptr;
  const float incoming_grad = backward ? incoming().item<float>() : 1.0f;
  const float loss =
      model.loss == Loss::MSE
          ? mixed::mse_loss(compute_dtype_, output, y.const_data_ptr<float>(),
                            rows * model.out_features(), incoming_grad, grad_out)
          : mixed::cross_entropy_loss(compute_dtype_, output, y.const_data_ptr<int64_t>(), rows,
                                      model.out_features(), incoming_grad, grad_out);
  *ptr(ws_.loss) = loss;
  if (!backward) return;

  const size_t stop = compute_.first_trained_layer();
  for (size_t l = depth; l-- > stop;) {
    const DenseLayer& layer = compute_.layers[l];
    const int64_t out = compute_.width(l), in = layer.weight.size(1);
    float* grad = ptr(ws_.grad[l]);
    const float* a = ptr(ws_.out[l]);
    const float* z = ws_.pre[l].defined() ? ptr(ws_.pre[l]) : a;
    const int64_t bias = compute_.bias_param[l];
    float* bias_grad = compute_.trains(bias) ? ptr(ws_.param_grads[bias]) : nullptr;
    mixed::activation_backward(compute_dtype_, grad, z, a, rows, out, layer.activation, bias_grad);
    if (compute_.trains(compute_.weight_param[l])) {
      const float* input = l == 0 ? ptr(input_) : ptr(ws_.out[l - 1]);
      float* weight_grad = ptr(ws_.param_grads[compute_.weight_param[l]]);
      cpu::gemm<float>(true, false, out, in, rows, grad, out, input, in, weight_grad, in);
    }
    if (l > stop) {
      cpu::gemm<float>(false, false, rows, in, out, grad, out, ptr(layer.weight), in,
                       ptr(ws_.grad[l - 1]), in);
    }
  }
}

}  // namespace torchext::train
