// MixedStep (see mixed_step.h): the precisions' names, the choice of kernels,
// the workspaces and compute copies, and the update with loss scaling.
// The two forward/backward implementations are in step_mixed_aten.cpp and
// step_mixed_emulated.cpp.
#include "train/mixed_step.h"

#include "train/mixed_kernels.h"
#include "train/mixed_update_cpu.h"
#include "train/validation.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <c10/util/irange.h>

#include <algorithm>

namespace torchext {

Precision precision_from_name(const std::string& name) {
  if (name.empty()) return Precision::Default;
  if (name == "bf16-mixed") return Precision::BF16Mixed;
  if (name == "16-mixed") return Precision::FP16Mixed;
  TORCH_CHECK(false, "torchext: unknown precision '", name,
              "'; expected bf16-mixed or 16-mixed (or none for the model's own dtype)");
}

std::string precision_name(Precision precision) {
  switch (precision) {
    case Precision::BF16Mixed: return "bf16-mixed";
    case Precision::FP16Mixed: return "16-mixed";
    case Precision::Default: break;
  }
  return "";
}

LossScaler OptimizerLink::read_loss_scaler() {
  TORCH_CHECK(false,
              "torchext.Trainer: a 16-mixed trainer needs a loss scaler, and its optimizer "
              "link provides none");
}

namespace train {
namespace {

// From this many weights in the largest layer on, the ATen kernels (oneDNN's
// 16-bit GEMMs) run; below it their per-call cost outweighs the faster GEMM and
// the emulated kernels run. The seed network (40x30) is far below and
// 1024-wide layers far above; the crossover between was not measured closely.
constexpr int64_t kAtenMinWeights = 128 * 128;

bool emulate_on_cpu(const Model& model) {
  int64_t largest = 0;
  for (const DenseLayer& layer : model.layers) largest = std::max(largest, layer.weight.numel());
  return largest < kAtenMinWeights;
}

}  // namespace

c10::optional<std::string> mixed_precision_problem(const std::vector<DenseLayer>& layers,
                                                   Precision precision) {
  const at::ScalarType dtype = layers.front().weight.scalar_type();
  if (dtype == at::kFloat) return c10::nullopt;
  return c10::str(precision_name(precision),
                  " trains float32 parameters (its master weights), but the model is ", dtype,
                  " (autocast leaves ", dtype, " layers in ", dtype, "); convert it with .float()");
}

MixedStep::MixedStep(const Model& model, Precision precision, bool reference)
    : precision_(precision),
      compute_dtype_(precision == Precision::BF16Mixed ? at::kBFloat16 : at::kHalf),
      host_decides_(model.device.is_cpu() && !reference),
      emulated_(host_decides_ && emulate_on_cpu(model)),
      fused_update_(host_decides_ && !emulated_) {
  const at::ScalarType storage = emulated_ ? at::kFloat : compute_dtype_;
  std::vector<DenseLayer> copies;
  for (const DenseLayer& layer : model.layers) {
    copies.push_back({at::empty_like(layer.weight, storage),
                      layer.bias.defined() ? at::empty_like(layer.bias, storage) : at::Tensor(),
                      layer.activation});
  }
  compute_ = build_model(std::move(copies), model.loss);
  copy_versions_.assign(model.params.size(), -1);
  one_ = at::ones({}, at::TensorOptions().dtype(at::kFloat).device(model.device));
  found_inf_ = at::zeros_like(one_);
}

void MixedStep::ensure(const Model& model, int64_t rows) {
  if (rows <= ws_.capacity && !ws_.param_grads.empty()) return;
  ws_.ensure(compute_, rows);
  const int64_t cap = ws_.capacity;
  const auto storage = at::TensorOptions().dtype(compute_.dtype).device(model.device);
  const auto f32 = storage.dtype(at::kFloat);
  input_ = at::empty({cap, model.in_features()}, storage);
  if (emulated_) {
    loss_ = ws_.loss;  // float32 already
    return;
  }
  output_f32_ = at::empty({cap, model.out_features()}, f32);
  grad_f32_ = at::empty_like(output_f32_);
  loss_ws_.loss = at::empty({}, f32);
  loss_ws_.total_weight = at::empty({}, f32);
  if (model.loss == Loss::CrossEntropy) {
    loss_ws_.log_probs = at::empty_like(output_f32_);
    loss_ws_.nll_grad = at::empty_like(output_f32_);
  }
  loss_ = loss_ws_.loss;
  if (!fused_update_ && grads_f32_.empty()) {
    for (const at::Tensor& p : model.params) grads_f32_.push_back(at::empty_like(p));
  }
}

void MixedStep::invalidate_copies() { std::fill(copy_versions_.begin(), copy_versions_.end(), -1); }

void MixedStep::refresh_copies(const Model& model) {
  compute_.trainable = model.trainable;
  for (const auto i : c10::irange(model.params.size())) {
    const at::Tensor& p = model.params[i];
    const int64_t version = static_cast<int64_t>(p._version());
    if (copy_versions_[i] == version) continue;
    at::Tensor& copy = compute_.params[i];
    if (emulated_) {
      mixed::round_to(compute_dtype_, p.const_data_ptr<float>(), copy.data_ptr<float>(), p.numel());
    } else {
      copy.copy_(p);  // autocast's cast: round to nearest even
    }
    copy_versions_[i] = version;
  }
}

void MixedStep::forward_backward(const Model& model, const at::Tensor& x, const at::Tensor& y,
                                 bool backward) {
  refresh_copies(model);
  if (emulated_) {
    forward_backward_emulated(model, x, y, backward);
  } else {
    forward_backward_aten(model, x, y, backward);
  }
}

at::Tensor MixedStep::predict(const Model& model, const at::Tensor& x) {
  refresh_copies(model);
  return emulated_ ? forward_emulated(x).to(compute_dtype_) : forward_aten(x);
}

bool MixedStep::scaling() const { return precision_ == Precision::FP16Mixed && scaler_.enabled; }

const at::Tensor& MixedStep::incoming() const { return scaling() ? scaler_.scale : one_; }

// ---------------------------------------------------------------------------
// The update.

Update MixedStep::make_update(const Model& model, const std::vector<SGDGroup>& groups) const {
  // The emulated step's float32 gradients are in its workspace, rounded when the
  // update runs; the fused update reads the compute-dtype ones; the unfused one
  // their float32 copies.
  return Update(model, fused_update_ || emulated_ ? ws_.param_grads : grads_f32_, groups);
}

void MixedStep::begin_training(const Model& model, OptimizerLink& optimizer, const char* who) {
  if (precision_ != Precision::FP16Mixed) return;
  LossScaler scaler = optimizer.read_loss_scaler();
  if (scaler.enabled) {
    auto check_state = [&](const at::Tensor& t, const char* name, at::ScalarType dtype) {
      TORCH_CHECK(t.defined() && t.layout() == at::kStrided && t.numel() == 1 &&
                      t.scalar_type() == dtype && t.device() == model.device,
                  who, ": the loss scaler's ", name, " must be a one-element ", dtype,
                  " tensor on ", model.device, " (the model's device), got ",
                  t.defined() ? c10::str(t.scalar_type(), " ", t.sizes(), " on ", t.device())
                              : std::string("none"));
    };
    check_state(scaler.scale, "scale", at::kFloat);
    check_state(scaler.growth_tracker, "growth tracker", at::kInt);
    TORCH_CHECK(scaler.growth_factor > 1.0 && std::isfinite(scaler.growth_factor), who,
                ": the loss scaler's growth factor must be a finite number > 1, got ",
                scaler.growth_factor);
    TORCH_CHECK(scaler.backoff_factor > 0.0 && scaler.backoff_factor < 1.0, who,
                ": the loss scaler's backoff factor must be in (0, 1), got ",
                scaler.backoff_factor);
    TORCH_CHECK(scaler.growth_interval >= 1 && scaler.growth_interval <= INT32_MAX, who,
                ": the loss scaler's growth interval must be in [1, 2**31 - 1], got ",
                scaler.growth_interval);
  }
  scaler_ = std::move(scaler);
  history_steps_ = -1;
}

void MixedStep::apply(const Model& model, Update& update, OptimizerLink& optimizer,
                      const c10::optional<at::Tensor>& hold) {
  const bool scale = scaling();
  std::vector<at::Tensor> grads;  // the trainable parameters' gradients
  for (const auto i : c10::irange(model.params.size())) {
    if (model.trains(static_cast<int64_t>(i))) grads.push_back(ws_.param_grads[i]);
  }
  if (host_decides_) {
    TORCH_INTERNAL_ASSERT(!hold.has_value(), "the CPU path checks losses on the host");
    // GradScaler's inverse scale: 1 / scale in float64, rounded to float32.
    const float inv_scale = scale ? static_cast<float>(1.0 / scaler_.scale.item<double>()) : 1.0f;
    bool found = false;
    if (emulated_) {
      for (const at::Tensor& g : grads) {
        found |=
            mixed::round_and_unscale(compute_dtype_, g.data_ptr<float>(), g.numel(), inv_scale);
      }
      found &= scale;
      if (!found) update.apply(optimizer, c10::nullopt);
    } else {
      found = scale && mixed::any_non_finite(grads);
      if (!found) {
        update.apply(optimizer, [inv_scale](const Update::GroupCall& call) {
          mixed::sgd_from_compute_grads(call, inv_scale);
        });
      }
    }
    if (scale) found_inf_.fill_(found ? 1.0 : 0.0);
  } else {
    // The device path, as the stock loop: float32 gradients, unscaled and
    // checked by GradScaler's own op, the update skipped on the device.
    std::vector<at::Tensor> wide;
    for (const auto i : c10::irange(model.params.size())) {
      if (!model.trains(static_cast<int64_t>(i))) continue;
      wide.push_back(grads_f32_[i].copy_(ws_.param_grads[i]));
    }
    if (scale) {
      found_inf_.zero_();
      const at::Tensor inv_scale = scaler_.scale.to(at::kDouble).reciprocal().to(at::kFloat);
      at::_amp_foreach_non_finite_check_and_unscale_(wide, found_inf_, inv_scale);
    }
    if (update.creates_buffers()) {
      // A created buffer must be written by its update: decided on the host (fit
      // has checked the loss on the host too, so `hold` is clear).
      if (!scale || found_inf_.item<float>() == 0.0f) update.apply(optimizer, c10::nullopt);
    } else if (scale) {
      update.apply(optimizer, hold ? at::logical_or(found_inf_, *hold).to(at::kFloat) : found_inf_);
    } else {
      update.apply(optimizer, hold);
    }
  }
  if (scale) step_scaler();
}

void MixedStep::step_scaler() {
  if (history_steps_ >= 0 && history_steps_ < scale_history_.size(0)) {
    scale_history_[history_steps_].copy_(scaler_.scale.reshape({}));
    tracker_history_[history_steps_].copy_(scaler_.growth_tracker.reshape({}));
    ++history_steps_;
  }
  at::_amp_update_scale_(scaler_.scale, scaler_.growth_tracker, found_inf_, scaler_.growth_factor,
                         scaler_.backoff_factor, scaler_.growth_interval);
}

void MixedStep::begin_epoch(int64_t steps_per_epoch) {
  if (!scaling()) return;
  if (!scale_history_.defined() || scale_history_.size(0) < steps_per_epoch) {
    scale_history_ = at::empty({steps_per_epoch}, scaler_.scale.options());
    tracker_history_ = at::empty({steps_per_epoch}, scaler_.growth_tracker.options());
  }
  history_steps_ = 0;
}

void MixedStep::restore_scaler_before(int64_t step_in_epoch) {
  if (!scaling() || step_in_epoch < 0 || step_in_epoch >= history_steps_) return;
  scaler_.scale.copy_(scale_history_[step_in_epoch]);
  scaler_.growth_tracker.copy_(tracker_history_[step_in_epoch]);
}

}  // namespace train
}  // namespace torchext
