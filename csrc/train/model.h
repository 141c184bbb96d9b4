// Internal shapes of the training-loop core: the validated model and the
// per-batch-size workspaces, shared by the two step implementations
// (step_cpu.cpp: fused kernels on raw buffers; step_aten.cpp: ATen out= ops,
// used on CUDA and as the reference on CPU).
#pragma once

#include <torchext/trainer_core.h>

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>

#include <vector>

namespace torchext::train {

struct Model {
  std::vector<DenseLayer> layers;
  Loss loss = Loss::MSE;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  std::vector<at::Tensor> params;                    // W0, b0, W1, b1, ... (absent biases skipped)
  std::vector<c10::SmallVector<int64_t, 2>> shapes;  // per param, as validated
  std::vector<int64_t> weight_param;                 // per layer: index into params
  std::vector<int64_t> bias_param;                   // per layer: index into params, or -1
  // Per param: requires_grad, read at the start of each training call. A frozen
  // parameter gets no gradient and no update.
  c10::SmallVector<bool, 16> trainable;

  int64_t in_features() const { return layers.front().weight.size(1); }
  int64_t out_features() const { return layers.back().weight.size(0); }
  int64_t width(size_t layer) const { return layers[layer].weight.size(0); }
  bool trains(int64_t param) const { return param >= 0 && trainable[param]; }
  // The lowest layer with a trainable parameter (layers.size() if none): the
  // backward pass stops there.
  size_t first_trained_layer() const;
};

// Buffers for up to `capacity` rows; a step on B rows uses the first B.
struct Workspace {
  int64_t capacity = 0;
  std::vector<at::Tensor> pre;          // z_l [cap, O_l]: kept apart from out only for GELU
  std::vector<at::Tensor> out;          // a_l [cap, O_l]
  std::vector<at::Tensor> grad;         // dL/da_l, turned into dL/dz_l in place [cap, O_l]
  std::vector<at::Tensor> param_grads;  // one per Model::params: views of grad_buffer
  // Every gradient, flat (params in order), then two slots the data-parallel
  // all-reduce uses (see gradient_reducer.h): one rank's loss, and a stop flag.
  at::Tensor grad_buffer;
  at::Tensor loss;          // 0-dim, model dtype
  at::Tensor log_probs;     // [cap, C] for cross-entropy on the ATen path
  at::Tensor nll_grad;      // [cap, C] likewise
  at::Tensor total_weight;  // 0-dim, nll_loss's bookkeeping
  at::Tensor one;           // 0-dim 1.0: the loss's incoming gradient

  void ensure(const Model& model, int64_t rows);
  at::Tensor loss_slot() const { return grad_buffer[grad_buffer.size(0) - 2]; }
  at::Tensor stop_slot() const { return grad_buffer[grad_buffer.size(0) - 1]; }
};

// Forward (and, with backward, the loss gradient through every layer into
// Workspace::param_grads of the trainable parameters). x [B, I] contiguous;
// y [B, O] (MSE) or [B] int64 (cross-entropy), contiguous. Writes the loss into
// Workspace::loss.
void forward_backward_cpu(const Model& model, Workspace& ws, const at::Tensor& x,
                          const at::Tensor& y, bool backward);
void forward_backward_aten(const Model& model, Workspace& ws, const at::Tensor& x,
                           const at::Tensor& y, bool backward);

// The two halves of forward_backward_aten, for steps that put something between
// them (the mixed-precision step computes its loss in float32). loss_aten writes
// the loss of output [B, O] against y into ws.loss and, when grad_out is defined,
// its gradient times `incoming` (0-dim, the loss's incoming gradient) into
// grad_out; it uses ws.log_probs, ws.nll_grad and ws.total_weight.
// backward_aten runs from dL/da of the last layer in ws.grad down to the
// gradients of the trainable parameters.
void loss_aten(Loss loss, const at::Tensor& output, const at::Tensor& y, Workspace& ws,
               const at::Tensor& incoming, at::Tensor grad_out);
void backward_aten(const Model& model, Workspace& ws, const at::Tensor& x);

// The training steps forward_backward_cpu has run on a team of threads
// (step_cpu.cpp) since the library loaded: for tests and benchmarks.
int64_t cpu_team_steps();

// Forward only; returns a view of the last layer's output rows.
at::Tensor forward_cpu(const Model& model, Workspace& ws, const at::Tensor& x);
at::Tensor forward_aten(const Model& model, Workspace& ws, const at::Tensor& x);

}  // namespace torchext::train
