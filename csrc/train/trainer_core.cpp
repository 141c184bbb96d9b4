// TrainerCore: construction, the per-call checks, step and predict. fit and
// evaluate are in fit_loop.cpp, the update in update.cpp, validation in
// validation.cpp, the step itself in step_cpu.cpp (fused kernels, CPU) and
// step_aten.cpp (ATen operators: CUDA, and the CPU reference); the step of the
// mixed precisions in mixed_step.cpp.
#include <torchext/trainer_core.h>

#include "train/core_impl.h"
#include "train/update.h"
#include "train/validation.h"

#include <c10/core/GradMode.h>

namespace torchext {

using train::Model;

namespace {

// What stops the core from running `layers` at `precision`, or nullopt.
c10::optional<std::string> core_problem(const std::vector<DenseLayer>& layers,
                                        Precision precision) {
  auto problem = train::model_problem(layers);
  if (!problem && precision != Precision::Default) {
    problem = train::mixed_precision_problem(layers, precision);
  }
  return problem;
}

}  // namespace

void TrainerCore::Impl::build(std::vector<DenseLayer> layers, Loss loss) {
  train::Model built = train::build_model(std::move(layers), loss);
  mixed = precision == Precision::Default
              ? nullptr
              : std::make_unique<train::MixedStep>(built, precision, reference_kernels);
  model = std::move(built);
  ws = train::Workspace();
  on_cuda = model.device.is_cuda();
}

void TrainerCore::Impl::refresh(const char* who) {
  if (mixed) mixed->invalidate_copies();
  if (train::parameters_unchanged(model)) return;
  // The caller's tensors changed in place (model.double(), `.data = ...`): the
  // same tensors, so the model is rebuilt over them as they are now.
  const auto problem = core_problem(model.layers, precision);
  TORCH_CHECK(!problem, who,
              ": the model's parameters changed since the trainer was built and "
              "the training core cannot run them as they are now (",
              *problem, "); nothing was changed: restore them, or build a new trainer");
  build(std::move(model.layers), model.loss);
}

std::vector<SGDGroup> TrainerCore::Impl::begin_training(OptimizerLink& optimizer, const char* who) {
  train::read_trainable(model);
  TORCH_CHECK(model.first_trained_layer() < model.layers.size(), who,
              ": no parameter of the model requires grad; there is nothing to train");
  std::vector<SGDGroup> groups = optimizer.read_groups();
  train::check_groups(model, groups, who);
  if (mixed) mixed->begin_training(model, optimizer, who);
  return groups;
}

void TrainerCore::Impl::forward_backward(const at::Tensor& x, const at::Tensor& y, bool backward) {
  if (mixed) {
    mixed->forward_backward(model, x, y, backward);
  } else if (use_cpu_kernels()) {
    train::forward_backward_cpu(model, ws, x, y, backward);
  } else {
    train::forward_backward_aten(model, ws, x, y, backward);
  }
}

void TrainerCore::Impl::ensure_workspace(int64_t rows) {
  if (mixed) {
    mixed->ensure(model, rows);
  } else {
    ws.ensure(model, rows);
  }
}

train::Update TrainerCore::Impl::make_update(const std::vector<SGDGroup>& groups) const {
  return mixed ? mixed->make_update(model, groups) : train::Update(model, ws, groups);
}

void TrainerCore::Impl::apply_update(train::Update& update, OptimizerLink& optimizer,
                                     const c10::optional<at::Tensor>& skip_if) {
  if (mixed) {
    mixed->apply(model, update, optimizer, skip_if);
  } else {
    update.apply(optimizer, skip_if);
  }
}

at::Tensor TrainerCore::Impl::forward(const at::Tensor& x) {
  if (mixed) return mixed->predict(model, x);
  return use_cpu_kernels() ? train::forward_cpu(model, ws, x) : train::forward_aten(model, ws, x);
}

TrainerCore::TrainerCore(std::vector<DenseLayer> layers, Loss loss, Precision precision)
    : impl_(std::make_unique<Impl>()) {
  const auto problem = core_problem(layers, precision);
  TORCH_CHECK(!problem, "torchext.Trainer: ", *problem);
  impl_->precision = precision;
  impl_->build(std::move(layers), loss);
}

TrainerCore::~TrainerCore() = default;
TrainerCore::TrainerCore(TrainerCore&&) noexcept = default;
TrainerCore& TrainerCore::operator=(TrainerCore&&) noexcept = default;

const std::vector<at::Tensor>& TrainerCore::parameters() const { return impl_->model.params; }
Loss TrainerCore::loss() const { return impl_->model.loss; }
Precision TrainerCore::precision() const { return impl_->precision; }
std::string TrainerCore::mixed_kernels() const {
  auto hold = impl_->lock.acquire(TrainerLock::Access::Read, "mixed_kernels");
  if (!impl_->mixed) return "";
  return impl_->mixed->emulated() ? "emulated" : "aten";
}
std::string TrainerCore::backend() const { return impl_->on_cuda ? "cuda" : "cpu"; }
int64_t TrainerCore::steps() const { return impl_->steps; }
void TrainerCore::set_steps(int64_t steps) {
  TORCH_CHECK(steps >= 0, "torchext.Trainer: the step count must be non-negative, got ", steps);
  impl_->steps = steps;
}
TrainerLock& TrainerCore::lock() const { return impl_->lock; }

void TrainerCore::use_reference_kernels(bool enabled) {
  auto hold = impl_->lock.acquire(TrainerLock::Access::Write, "use_reference_kernels");
  if (impl_->reference_kernels == enabled) return;
  impl_->reference_kernels = enabled;
  // A mixed-precision step picks its kernels and workspaces when it is built.
  if (impl_->mixed) impl_->build(std::move(impl_->model.layers), impl_->model.loss);
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
  impl.ensure_workspace(xc.size(0));
  impl.forward_backward(xc, yc, /*backward=*/true);
  const at::Tensor loss = impl.loss().clone();
  train::Update update = impl.make_update(groups);
  impl.apply_update(update, optimizer, c10::nullopt);
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
  impl.ensure_workspace(xc.size(0));
  return impl.forward(xc).clone();
}

}  // namespace torchext
