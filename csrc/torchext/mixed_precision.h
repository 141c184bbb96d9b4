// Mixed-precision training in the training core: the precision policies and the
// loss scaler of float16 training.
//
// "bf16-mixed" and "16-mixed" are the policy of a stock loop under
// torch.autocast(device, bfloat16 | float16): the Linear layers' GEMMs and the
// activations run in the compute dtype (float32 accumulation inside each GEMM,
// one rounding of its result, bias included), the loss and its gradient in
// float32, and the update in float32 on the model's own float32 parameters (the
// master weights) with float32 momentum buffers. "16-mixed" adds dynamic loss
// scaling with torch.amp.GradScaler's algorithm: the loss gradient is multiplied
// by the scale, the float32 gradients are unscaled and checked, a step whose
// gradients are not all finite changes no parameter and no buffer, and the scale
// then backs off (or grows after growth_interval clean steps).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <string>

namespace torchext {

enum class Precision {
  Default,    // the model's own dtype (float32 or float64) throughout
  BF16Mixed,  // "bf16-mixed"
  FP16Mixed,  // "16-mixed", with loss scaling
};

// "" (Default), "bf16-mixed" or "16-mixed"; anything else raises c10::Error
// naming the accepted values.
Precision precision_from_name(const std::string& name);
std::string precision_name(Precision precision);  // "" for Default

// The loss scaler of a "16-mixed" trainer: torch.amp.GradScaler's state and
// settings. The core reads it at the start of every step (and once per fit) and
// updates `scale` and `growth_tracker` in place after each step, as
// GradScaler.update does, so the scaler's owner sees its state move.
struct LossScaler {
  // The state: a 1-element float32 scale and a 1-element int32 count of clean
  // steps in a row, on the model's device. Undefined until prepare() makes them.
  at::Tensor scale;
  at::Tensor growth_tracker;
  // GradScaler's settings and defaults.
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  // false: float16 without loss scaling, as GradScaler(enabled=False): no
  // scaling, no check, every update applied.
  bool enabled = true;

  // Makes the state tensors on `device` (scale = init_scale, tracker = 0) when
  // they are undefined, or moves them there, as GradScaler creates its own
  // lazily on the device of the first loss it scales.
  void prepare(const at::Device& device);
  // The current scale (init_scale before prepare) and growth tracker.
  double current_scale() const;
  int64_t current_growth_tracker() const;
};

// torch.amp.GradScaler.state_dict()'s layout: {"scale": float, "growth_factor":
// float, "backoff_factor": float, "growth_interval": int, "_growth_tracker":
// int}, or {} for a disabled scaler, so either language loads the other's.
c10::IValue loss_scaler_state_dict(const LossScaler& scaler);
// Raises c10::Error naming the problem unless `state` is such a dict (or {},
// which holds nothing to restore); changes nothing.
void check_loss_scaler_state_dict(const c10::IValue& state, const char* who);
// Checks `state`, then loads it (as GradScaler.load_state_dict: settings and
// state; a disabled scaler, or {}, loads nothing).
void load_loss_scaler_state_dict(LossScaler& scaler, const c10::IValue& state);

}  // namespace torchext
