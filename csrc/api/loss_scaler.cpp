// torchext::LossScaler's state tensors and its state dict in
// torch.amp.GradScaler.state_dict()'s layout (see torchext/mixed_precision.h).
#include <torchext/mixed_precision.h>

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>

#include <cmath>
#include <limits>

namespace torchext {

void LossScaler::prepare(const at::Device& device) {
  if (!enabled) return;
  const auto options = at::TensorOptions().device(device);
  if (!scale.defined()) scale = at::full({}, init_scale, options.dtype(at::kFloat));
  if (!growth_tracker.defined()) growth_tracker = at::zeros({}, options.dtype(at::kInt));
  if (scale.device() != device) scale = scale.to(device);
  if (growth_tracker.device() != device) growth_tracker = growth_tracker.to(device);
}

double LossScaler::current_scale() const {
  return scale.defined() ? scale.item<double>() : init_scale;
}

int64_t LossScaler::current_growth_tracker() const {
  return growth_tracker.defined() ? growth_tracker.item<int64_t>() : 0;
}

c10::IValue loss_scaler_state_dict(const LossScaler& scaler) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  if (!scaler.enabled) return dict;
  dict.insert("scale", scaler.current_scale());
  dict.insert("growth_factor", scaler.growth_factor);
  dict.insert("backoff_factor", scaler.backoff_factor);
  dict.insert("growth_interval", scaler.growth_interval);
  dict.insert("_growth_tracker", scaler.current_growth_tracker());
  return dict;
}

void check_loss_scaler_state_dict(const c10::IValue& state, const char* who) {
  TORCH_CHECK(state.isGenericDict(), who, ": the checkpoint's scaler state must be a dict, got ",
              state.tagKind());
  const auto dict = state.toGenericDict();
  if (dict.empty()) return;
  auto number = [&](const char* key, double lo, double hi, bool lo_open, bool hi_open) {
    TORCH_CHECK(dict.contains(key), who, ": the checkpoint's scaler state has no '", key, "'");
    const c10::IValue v = dict.at(key);
    TORCH_CHECK(v.isDouble() || v.isInt(), who, ": the checkpoint's scaler ", key,
                " must be a number, got ", v.tagKind());
    const double d = v.isDouble() ? v.toDouble() : static_cast<double>(v.toInt());
    const bool ok = (lo_open ? d > lo : d >= lo) && (hi_open ? d < hi : d <= hi);
    TORCH_CHECK(ok, who, ": the checkpoint's scaler ", key, " must be in ", lo_open ? "(" : "[", lo,
                ", ", hi, hi_open ? ")" : "]", ", got ", d);
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  number("scale", 0, kInf, true, true);
  number("growth_factor", 1, kInf, true, true);
  number("backoff_factor", 0, 1, true, true);
  for (const char* key : {"growth_interval", "_growth_tracker"}) {
    TORCH_CHECK(dict.contains(key) && dict.at(key).isInt(), who, ": the checkpoint's scaler ", key,
                " must be an integer");
  }
  number("growth_interval", 1, std::numeric_limits<int32_t>::max(), false, false);
  number("_growth_tracker", 0, std::numeric_limits<int32_t>::max(), false, false);
}

void load_loss_scaler_state_dict(LossScaler& scaler, const c10::IValue& state) {
  check_loss_scaler_state_dict(state, "torchext::load_loss_scaler_state_dict");
  const auto dict = state.toGenericDict();
  if (!scaler.enabled || dict.empty()) return;
  auto real = [&](const char* key) {
    const c10::IValue v = dict.at(key);
    return v.isDouble() ? v.toDouble() : static_cast<double>(v.toInt());
  };
  scaler.init_scale = real("scale");
  scaler.growth_factor = real("growth_factor");
  scaler.backoff_factor = real("backoff_factor");
  scaler.growth_interval = dict.at("growth_interval").toInt();
  if (scaler.scale.defined()) scaler.scale.fill_(scaler.init_scale);
  if (scaler.growth_tracker.defined()) {
    scaler.growth_tracker.fill_(dict.at("_growth_tracker").toInt());
  } else {
    scaler.growth_tracker = at::full({}, dict.at("_growth_tracker").toInt(), at::kInt);
  }
}

}  // namespace torchext
