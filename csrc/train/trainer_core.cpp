// TrainerCore: construction, the per-call checks, step and predict. fit and
// evaluate are in fit_loop.cpp, the update in update.cpp, validation in
// validation.cpp, the step itself in step_cpu.cpp (fused kernels, CPU) and
// step_aten.cpp (ATen operators: CUDA, and the CPU reference).
#include <torchext/trainer_core.h>

#include "train/core_impl.h"
#include "train/update.h"
#include "train/validation.h"

#include <c10/core/GradMode.h>

namespace torchext {

using train::Model;

void TrainerCore::Impl::refresh(const char* who) {
  if (train::parameters_unchanged(model)) return;
  // The caller's tensors changed in place (model.double(), `.data = ...`): the
  // same tensors, so the model is rebuilt over them as they are now.
  const auto problem = train::model_problem(model.layers);
  TORCH_CHECK(!problem, who,
              ": the model's parameters changed since the trainer was built and "
              "the training core cannot run them as they are now (",
              *problem, "); nothing was changed: restore them, or build a new trainer");
  model = train::build_model(std::move(model.layers), model.loss);
  ws = train::Workspace();
  on_cuda = model.device.is_cuda();
}

std::vector<SGDGroup> TrainerCore::Impl::begin_training(OptimizerLink& optimizer, const char* who) {
  train::read_trainable(model);
  TORCH_CHECK(model.first_trained_layer() < model.layers.size(), who,
              ": no parameter of the model requires grad; there is nothing to train");
  std::vector<SGDGroup> groups = optimizer.read_groups();
  train::check_groups(model, groups, who);
  return groups;
}

void TrainerCore::Impl::forward_backward(const at::Tensor& x, const at::Tensor& y, bool backward) {
  if (use_cpu_kernels()) {
    train::forward_backward_cpu(model, ws, x, y, backward);
  } else {
    train::forward_backward_aten(model, ws, x, y, backward);
  }
}

TrainerCore::TrainerCore(std::vector<DenseLayer> layers, Loss loss)
    : impl_(std::make_unique<Impl>()) {
  const auto problem = train::model_problem(layers);
  TORCH_CHECK(!problem, "torchext.Trainer: ", *problem);
  impl_->model = train::build_model(std::move(layers), loss);
  impl_->on_cuda = impl_->model.device.is_cuda();
}

TrainerCore::~TrainerCore() = default;
TrainerCore::TrainerCore(TrainerCore&&) noexcept = default;
TrainerCore& TrainerCore::operator=(TrainerCore&&) noexcept = default;

const std::vector<at::Tensor>& TrainerCore::parameters() const { return impl_->model.params; }
Loss TrainerCore::loss() const { return impl_->model.loss; }
std::string TrainerCore::backend() const { return impl_->on_cuda ? "cuda" : "cpu"; }
int64_t TrainerCore::steps() const { return impl_->steps; }
void TrainerCore::set_steps(int64_t steps) {
  TORCH_CHECK(steps >= 0, "torchext.Trainer: the step count must be non-negative, got ", steps);
  impl_->steps = steps;
}
TrainerLock& TrainerCore::lock() const { return impl_->lock; }

void TrainerCore::use_reference_kernels(bool enabled) {
  auto hold = impl_->lock.acquire(TrainerLock::Access::Write, "use_reference_kernels");
  impl_->reference_kernels = enabled;
}

at::Tensor TrainerCore::step(const at::Tensor& x, const at::Tensor& y, OptimizerLink& optimizer) {
  constexpr const char* who = "torchext.Trainer.step";
  auto hold = impl_->lock.acquire(TrainerLock::Access::Run, who);
  Impl& impl = *impl_;
  impl.refresh(who);
  train::check_batch(impl.model, x, y, who, /*check_target_range=*/impl.model.device.is_cpu());
  std::vector<SGDGroup> groups = impl.begin_training(optimizer, who);
  at::NoGradGuard no_grad;
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  impl.ws.ensure(impl.model, xc.size(0));
  impl.forward_backward(xc, yc, /*backward=*/true);
  const at::Tensor loss = impl.ws.loss.clone();
  train::Update(impl.model, impl.ws, groups).apply(optimizer, c10::nullopt);
  ++impl.steps;
  return loss;
}

at::Tensor TrainerCore::predict(const at::Tensor& x) {
  constexpr const char* who = "torchext.Trainer.predict";
  auto hold = impl_->lock.acquire(TrainerLock::Access::Run, who);
  Impl& impl = *impl_;
  impl.refresh(who);
  const Model& model = impl.model;
  TORCH_CHECK(
      x.defined() && x.layout() == at::kStrided && x.dim() == 2 && x.size(1) == model.in_features(),
      who, ": input must be a dense tensor of shape [batch, ", model.in_features(), "], got ",
      x.defined() ? x.sizes() : c10::IntArrayRef());
  TORCH_CHECK(x.scalar_type() == model.dtype && x.device() == model.device, who, ": input must be ",
              model.dtype, " on ", model.device, ", got ", x.scalar_type(), " on ", x.device());
  at::NoGradGuard no_grad;
  const at::Tensor xc = x.contiguous();
  impl.ws.ensure(model, xc.size(0));
  const at::Tensor out = impl.use_cpu_kernels() ? train::forward_cpu(model, impl.ws, xc)
                                                : train::forward_aten(model, impl.ws, xc);
  return out.clone();
}

}  // namespace torchext
