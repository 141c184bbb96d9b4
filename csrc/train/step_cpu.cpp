// The training step on the CPU: fused kernels over the workspaces' raw buffers.
//
// forward:  a_l = act(a_{l-1} · W_lᵀ + b_l): one GEMM, bias and activation in
//           its epilogue (small layers) or in one pass after it
// loss:     value and dL/da_L in one pass
// backward: dL/dz_L and the bias gradient in one pass; then per layer
//           dW_l = dL/dz_lᵀ · a_{l-1}, and dL/da_{l-1} = dL/dz_l · W_l with the
//           derivative of layer l-1's activation in its epilogue (small
//           layers; else in the next pass), which also sums the bias gradient
// No tensor is allocated: everything lives in the Workspace (cpu_gemm.h).
#include "train/cpu_gemm.h"
#include "train/cpu_kernels.h"
#include "train/model.h"

namespace torchext::train {
namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
const T* forward_layers(const Model& model, Workspace& ws, const T* x, int64_t rows) {
  const T* input = x;
  int64_t in = model.in_features();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const DenseLayer& layer = model.layers[l];
    const int64_t out = model.width(l);
    T* a = ptr<T>(ws.out[l]);
    T* z = ws.pre[l].defined() ? ptr<T>(ws.pre[l]) : a;
    cpu::dense_forward<T>(input, rows, in, ptr<T>(layer.weight), out, ptr<T>(layer.bias),
                          layer.activation, z, a);
    input = a;
    in = out;
  }
  return input;
}

template <typename T>
void forward_backward(const Model& model, Workspace& ws, const at::Tensor& x, const at::Tensor& y,
                      bool backward) {
  const int64_t rows = x.size(0);
  const size_t depth = model.layers.size();
  const T* output = forward_layers<T>(model, ws, ptr<T>(x), rows);

  T* grad_out = backward ? ptr<T>(ws.grad[depth - 1]) : nullptr;
  const T loss = model.loss == Loss::MSE
                     ? cpu::mse_loss<T>(output, ptr<T>(y), rows * model.out_features(), grad_out)
                     : cpu::cross_entropy_loss<T>(output, y.data_ptr<int64_t>(), rows,
                                                  model.out_features(), grad_out);
  *ptr<T>(ws.loss) = loss;
  if (!backward) return;

  // Down to the lowest layer with a trainable parameter; frozen parameters get
  // no gradient (the gradient still flows through their layers).
  const size_t stop = model.first_trained_layer();
  bool derivative_applied = false;  // ws.grad[l] already holds dL/dz_l
  for (size_t l = depth; l-- > stop;) {
    const DenseLayer& layer = model.layers[l];
    const int64_t out = model.width(l), in = layer.weight.size(1);
    T* grad = ptr<T>(ws.grad[l]);
    const T* a = ptr<T>(ws.out[l]);
    const T* z = ws.pre[l].defined() ? ptr<T>(ws.pre[l]) : a;
    T* bias_grad =
        model.trains(model.bias_param[l]) ? ptr<T>(ws.param_grads[model.bias_param[l]]) : nullptr;
    const Activation still_to_apply = derivative_applied ? Activation::Identity : layer.activation;
    if (still_to_apply != Activation::Identity || bias_grad != nullptr) {
      // The loss and the tiles (which apply the derivative) write on the calling
      // thread; an input gradient that left it to this pass came from BLAS
      // (input_gradient, cpu_gemm.h).
      const auto written = l + 1 < depth && !derivative_applied ? cpu::Written::kByThreads
                                                                : cpu::Written::kByCallingThread;
      cpu::activation_backward<T>(grad, z, a, rows, out, still_to_apply, bias_grad, written);
    }

    const T* input = l == 0 ? ptr<T>(x) : ptr<T>(ws.out[l - 1]);
    if (model.trains(model.weight_param[l])) {
      T* weight_grad = ptr<T>(ws.param_grads[model.weight_param[l]]);
      cpu::weight_gradient<T>(grad, rows, out, input, in, weight_grad);
    }
    derivative_applied = false;
    if (l > stop) {
      derivative_applied =
          cpu::input_gradient<T>(grad, rows, out, ptr<T>(layer.weight), in, ptr<T>(ws.grad[l - 1]),
                                 model.layers[l - 1].activation, input);
    }
  }
}

}  // namespace

void forward_backward_cpu(const Model& model, Workspace& ws, const at::Tensor& x,
                          const at::Tensor& y, bool backward) {
  if (model.dtype == at::kDouble) {
    forward_backward<double>(model, ws, x, y, backward);
  } else {
    forward_backward<float>(model, ws, x, y, backward);
  }
}

at::Tensor forward_cpu(const Model& model, Workspace& ws, const at::Tensor& x) {
  const int64_t rows = x.size(0);
  if (model.dtype == at::kDouble) {
    forward_layers<double>(model, ws, ptr<double>(x), rows);
  } else {
    forward_layers<float>(model, ws, ptr<float>(x), rows);
  }
  return ws.out.back().narrow(0, 0, rows);
}

}  // namespace torchext::train
