// The mixed-precision step of the training core ("bf16-mixed", "16-mixed"; see
// torchext/mixed_precision.h): what a stock loop under torch.autocast (and
// torch.amp.GradScaler) computes, without an autograd graph.
//
// The compute copies. Each step runs the model's layers on copies of its
// parameters rounded to the compute dtype (autocast's cast of the weights),
// held as a Model of their own (`compute`) so that the step code of the default
// precision runs on them. A copy is remade when its parameter's version counter
// moved since the copy was made (an update, a load_state_dict, a user's in-place
// edit).
//
// Two ways to compute, picked per model:
//  - ATen (step_mixed_aten.cpp): compute-dtype workspaces and ATen operators,
//    the very ops autocast runs (addmm/mm in the compute dtype: oneDNN AMX or
//    AVX-512-BF16 on the CPU, cuBLASLt on CUDA). CUDA, the CPU reference, and
//    CPU models whose GEMMs are large enough to pay for oneDNN's per-call cost.
//  - emulated (step_mixed_emulated.cpp, CPU only): float32 workspaces holding values
//    rounded to the compute dtype where autocast rounds, with float32 BLAS GEMMs.
//    A product of two bfloat16 or float16 values is exact in float32, so a
//    float32 GEMM over rounded operands is a compute-dtype GEMM with float32
//    accumulation; rounding its result gives what the compute-dtype GEMM gives
//    (up to the order of the sums). Small models, where oneDNN's call overhead
//    would dominate.
//
// The update (mixed_step.cpp, mixed_update_cpu.cpp): float32 gradients (the compute-dtype ones
// widened, unscaled and checked as GradScaler.unscale_ does) into the SGD step
// of the default precision, then GradScaler.update's scale step; on the CPU's ATen path the
// compute-dtype gradients are widened chunk by chunk inside the update, never
// copied whole.
#pragma once

#include "train/model.h"
#include "train/update.h"

#include <c10/util/Optional.h>

#include <string>
#include <vector>

namespace torchext::train {

// What stops a model over `layers` (which model_problem accepted) from training
// at `precision`, or nullopt.
c10::optional<std::string> mixed_precision_problem(const std::vector<DenseLayer>& layers,
                                                   Precision precision);

class MixedStep {
 public:
  // `reference`: the ATen operators and the unfused update on the CPU too.
  MixedStep(const Model& model, Precision precision, bool reference);

  Precision precision() const { return precision_; }
  at::ScalarType compute_dtype() const { return compute_dtype_; }
  bool emulated() const { return emulated_; }

  // Workspaces for batches of up to `rows` rows.
  void ensure(const Model& model, int64_t rows);
  // Makes the next forward copy every parameter again: called at the start of
  // each call, so that a change no version counter saw (a write through
  // `.data`) is picked up as the stock loop's cast would pick it up.
  void invalidate_copies();
  // The loss (0-dim float32) of the last forward_backward.
  const at::Tensor& loss() const { return loss_; }
  // Forward, float32 loss and (with backward) the gradients the update reads.
  void forward_backward(const Model& model, const at::Tensor& x, const at::Tensor& y,
                        bool backward);
  // Forward only: the last layer's output rows, in the compute dtype.
  at::Tensor predict(const Model& model, const at::Tensor& x);

  // The update of a training call, over the gradients this step produces.
  Update make_update(const Model& model, const std::vector<SGDGroup>& groups) const;
  // The start of a training call: reads and checks the loss scaler ("16-mixed").
  void begin_training(const Model& model, OptimizerLink& optimizer, const char* who);
  // Applies one step's update: unscales and checks the gradients ("16-mixed"),
  // applies the SGD step unless they are not all finite, then moves the loss
  // scale. `hold` (fit's deferred-loss flag on the device, non-zero after a
  // non-finite loss) skips the update; the scaler still steps, and fit puts it
  // back with restore_scaler_before once it reads the losses.
  void apply(const Model& model, Update& update, OptimizerLink& optimizer,
             const c10::optional<at::Tensor>& hold);
  // Fit's deferred path: begin_epoch starts recording the scaler's state before
  // each step of the epoch; restore_scaler_before puts back the state from
  // before step `step_in_epoch` of it (the first with a non-finite loss).
  void begin_epoch(int64_t steps_per_epoch);
  void restore_scaler_before(int64_t step_in_epoch);

 private:
  bool scaling() const;                // "16-mixed" with an enabled scaler
  const at::Tensor& incoming() const;  // the loss's incoming gradient: the scale, or 1
  void refresh_copies(const Model& model);
  void step_scaler();
  void forward_backward_aten(const Model& model, const at::Tensor& x, const at::Tensor& y,
                             bool backward);
  void forward_backward_emulated(const Model& model, const at::Tensor& x, const at::Tensor& y,
                                 bool backward);
  at::Tensor forward_aten(const at::Tensor& x);
  at::Tensor forward_emulated(const at::Tensor& x);

  Precision precision_;
  at::ScalarType compute_dtype_;
  bool host_decides_;  // CPU (not the reference): skips decided on the host, fused kernels
  bool emulated_;      // float32 workspaces of rounded values (else compute-dtype tensors)
  bool fused_update_;  // the fused CPU update from compute-dtype gradients

  Model compute_;                       // the layers over the compute copies
  std::vector<int64_t> copy_versions_;  // per parameter: its version when copied (-1: never)
  Workspace ws_;                        // over `compute_` (emulated: float32)
  at::Tensor input_;                    // x rounded to the compute dtype [cap, I]
  // The float32 loss of the ATen path: the output widened, its gradient, and
  // loss_aten's buffers.
  at::Tensor output_f32_, grad_f32_;
  Workspace loss_ws_;
  at::Tensor loss_;
  std::vector<at::Tensor> grads_f32_;  // the unfused update's float32 gradients
  at::Tensor one_;                     // float32 1: the loss's incoming gradient without scaling

  // Loss scaling ("16-mixed").
  LossScaler scaler_;
  at::Tensor found_inf_, inv_scale_;
  at::Tensor scale_history_, tracker_history_;  // deferred fit: the scaler before each step
  int64_t history_steps_ = -1;                  // steps recorded this epoch; -1: not recording
};

}  // namespace torchext::train
