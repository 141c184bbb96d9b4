// The core's workspaces (activations, gradients, loss scalars), allocated once
// per batch size and model, and the model's trained-layer bookkeeping.
#include "train/model.h"

namespace torchext::train {

size_t Model::first_trained_layer() const {
  for (size_t l = 0; l < layers.size(); ++l) {
    if (trains(weight_param[l]) || trains(bias_param[l])) return l;
  }
  return layers.size();
}

void Workspace::ensure(const Model& model, int64_t rows) {
  if (rows <= capacity && !param_grads.empty()) return;
  const int64_t cap = std::max(rows, capacity);
  const auto options = at::TensorOptions().dtype(model.dtype).device(model.device);
  pre.assign(model.layers.size(), at::Tensor());
  out.clear();
  grad.clear();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    out.push_back(at::empty({cap, model.width(l)}, options));
    grad.push_back(at::empty({cap, model.width(l)}, options));
    if (model.layers[l].activation == Activation::GELU) {
      pre[l] = at::empty({cap, model.width(l)}, options);
    }
  }
  int64_t numel = 0;
  for (const at::Tensor& p : model.params) numel += p.numel();
  // Zeros: the slots of frozen parameters are all-reduced too, and never read.
  grad_buffer = at::zeros({numel + 2}, options);
  param_grads.clear();
  int64_t offset = 0;
  for (const at::Tensor& p : model.params) {
    param_grads.push_back(grad_buffer.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  loss = at::empty({}, options);
  one = at::ones({}, options);
  total_weight = at::empty({}, options);
  if (model.loss == Loss::CrossEntropy) {
    log_probs = at::empty({cap, model.out_features()}, options);
    nll_grad = at::empty({cap, model.out_features()}, options);
  }
  capacity = cap;
}

}  // namespace torchext::train
