// The training step with ATen out= operators on the workspaces.
//
// Runs on any device ATen supports; on CUDA it is the step (every kernel on the
// current stream, no host synchronisation: the loss stays on the device). On the
// CPU it is the reference the fused kernels are tested against. The operators
// are the ones autograd would run for the stock model (addmm, relu/tanh/sigmoid/
// gelu and their *_backward, mse_loss, log_softmax + nll_loss, mm, sum), so the
// numbers match the stock loop's. Nothing is allocated beyond ATen's internals.
#include "train/mixed_relu_cpu.h"
#include "train/model.h"

namespace torchext::train {
namespace {

at::Tensor rows_of(const at::Tensor& t, int64_t rows) { return t.narrow(0, 0, rows); }

void activation_forward(Activation act, const at::Tensor& z, at::Tensor& a) {
  switch (act) {
    case Activation::Identity:
      if (!a.is_same(z)) a.copy_(z);
      break;
    case Activation::ReLU: at::relu_(a.is_same(z) ? a : a.copy_(z)); break;
    case Activation::Tanh: at::tanh_out(a, z); break;
    case Activation::Sigmoid: at::sigmoid_out(a, z); break;
    case Activation::GELU: at::gelu_out(a, z); break;
  }
}

// grad: dL/da in, dL/dz out (in place).
void activation_backward(Activation act, at::Tensor& grad, const at::Tensor& z,
                         const at::Tensor& a) {
  switch (act) {
    case Activation::Identity: break;
    case Activation::ReLU:
      // The same result, bit for bit, where ATen's kernel is slow (16-bit CPU).
      if (mixed::relu_backward_applies(grad, a)) {
        mixed::relu_backward_(grad, a);
      } else {
        at::threshold_backward_out(grad, grad, a, 0);
      }
      break;
    case Activation::Tanh: at::tanh_backward_out(grad, grad, a); break;
    case Activation::Sigmoid: at::sigmoid_backward_out(grad, grad, a); break;
    case Activation::GELU: at::gelu_backward_out(grad, grad, z); break;
  }
}

at::Tensor forward_layers(const Model& model, Workspace& ws, const at::Tensor& x) {
  const int64_t rows = x.size(0);
  at::Tensor input = x;
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const DenseLayer& layer = model.layers[l];
    at::Tensor a = rows_of(ws.out[l], rows);
    at::Tensor z = ws.pre[l].defined() ? rows_of(ws.pre[l], rows) : a;
    if (layer.bias.defined()) {
      at::addmm_out(z, layer.bias, input, layer.weight.t());
    } else {
      at::mm_out(z, input, layer.weight.t());
    }
    activation_forward(layer.activation, z, a);
    input = a;
  }
  return input;
}

}  // namespace

at::Tensor forward_aten(const Model& model, Workspace& ws, const at::Tensor& x) {
  return forward_layers(model, ws, x);
}

void loss_aten(Loss loss, const at::Tensor& output, const at::Tensor& y, Workspace& ws,
               const at::Tensor& incoming, at::Tensor grad_out) {
  const int64_t rows = output.size(0);
  const int64_t mean = at::Reduction::Mean;
  if (loss == Loss::MSE) {
    // Not mse_loss_out: its structured kernel resizes a 0-dim out to the input's
    // shape on the way (and warns that this is deprecated, at every call).
    ws.loss.copy_(at::mse_loss(output, y, mean));
    if (grad_out.defined()) at::mse_loss_backward_out(grad_out, incoming, output, y, mean);
  } else {
    at::Tensor log_probs = rows_of(ws.log_probs, rows);
    at::_log_softmax_out(log_probs, output, 1, false);
    at::nll_loss_forward_out(ws.loss, ws.total_weight, log_probs, y, {}, mean, -100);
    if (grad_out.defined()) {
      at::Tensor nll_grad = rows_of(ws.nll_grad, rows);
      at::nll_loss_backward_out(nll_grad, incoming, log_probs, y, {}, mean, -100, ws.total_weight);
      at::_log_softmax_backward_data_out(grad_out, nll_grad, log_probs, 1, output.scalar_type());
    }
  }
}

void backward_aten(const Model& model, Workspace& ws, const at::Tensor& x) {
  // As on the fused path: down to the lowest layer with a trainable parameter.
  const int64_t rows = x.size(0);
  const size_t stop = model.first_trained_layer();
  for (size_t l = model.layers.size(); l-- > stop;) {
    const DenseLayer& layer = model.layers[l];
    at::Tensor grad = rows_of(ws.grad[l], rows);
    const at::Tensor a = rows_of(ws.out[l], rows);
    const at::Tensor z = ws.pre[l].defined() ? rows_of(ws.pre[l], rows) : a;
    activation_backward(layer.activation, grad, z, a);
    if (model.trains(model.bias_param[l])) {
      at::sum_out(ws.param_grads[model.bias_param[l]], grad, at::IntArrayRef{0});
    }
    if (model.trains(model.weight_param[l])) {
      const at::Tensor input = l == 0 ? x : rows_of(ws.out[l - 1], rows);
      at::mm_out(ws.param_grads[model.weight_param[l]], grad.t(), input);
    }
    if (l > stop) {
      at::Tensor grad_input = rows_of(ws.grad[l - 1], rows);
      at::mm_out(grad_input, grad, layer.weight);
    }
  }
}

void forward_backward_aten(const Model& model, Workspace& ws, const at::Tensor& x,
                           const at::Tensor& y, bool backward) {
  const at::Tensor output = forward_layers(model, ws, x);
  const at::Tensor grad_out = backward ? rows_of(ws.grad.back(), x.size(0)) : at::Tensor();
  loss_aten(model.loss, output, y, ws, ws.one, grad_out);
  if (backward) backward_aten(model, ws, x);
}

}  // namespace torchext::train
