// TrainerCore: construction, the per-call checks, step and predict. fit and
// evaluate are in fit_loop.cpp, the update in update.cpp, validation in
// validation.cpp, the step itself in step_cpu.cpp (fused kernels, CPU) and
// step_aten.cpp (ATen operators: CUDA, and the CPU reference); the step of the
// mixed precisions in mixed_step.cpp.
#include <torchext/trainer_core.h>

#include "train/core_impl.h"
#include "train/update.h"
#include "train/validation.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/StringUtil.h>

#include <cstring>

namespace torchext {

using train::Model;

namespace {

// A copy of the 0-dim `loss` that the caller owns. On the CPU it is made without
// the dispatcher, whose empty + copy_ costs as much as the rest of a small step's
// fixed work.
at::Tensor copy_of_loss(const at::Tensor& loss) {
  if (!loss.device().is_cpu()) return loss.clone();
  at::Tensor copy = at::detail::empty_cpu({}, loss.scalar_type());
  std::memcpy(copy.data_ptr(), loss.const_data_ptr(), loss.element_size());
  return copy;
}

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

void TrainerCore::Impl::start_call(const char* who, const std::function<void()>& checks,
                                   const std::vector<std::pair<std::string, int64_t>>& settings) {
  if (!reducer) {
    checks();
    return;
  }
  std::exception_ptr failure;
  try {
    checks();
  } catch (...) {
    failure = std::current_exception();
  }
  data_parallel::agree(reducer->group(), model.device, failure == nullptr, settings, who);
  if (failure) std::rethrow_exception(failure);
}

void TrainerCore::Impl::stop_others(const char* who) noexcept {
  if (!reducer) return;
  try {
    ws.ensure(model, std::max<int64_t>(ws.capacity, 1));
  } catch (...) {
    return;  // no buffer to send: the others find out through the process group's timeout
  }
  reducer->send_stop(ws, who);
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

TrainerCore::TrainerCore(std::vector<DenseLayer> layers, Loss loss,
                         const DataParallelOptions& data_parallel)
    : TrainerCore(std::move(layers), loss) {
  const ProcessGroupPtr& group = data_parallel.group;
  TORCH_CHECK(group, "torchext.Trainer: DataParallelOptions::group is null");
  const Model& model = impl_->model;
  std::vector<std::string> names = data_parallel.parameter_names;
  if (names.empty()) {
    for (size_t l = 0; l < model.layers.size(); ++l) {
      names.push_back(c10::str("layer ", l, " weight"));
      if (model.bias_param[l] >= 0) names.push_back(c10::str("layer ", l, " bias"));
    }
  }
  TORCH_CHECK(names.size() == model.params.size(), "torchext.Trainer: ", names.size(),
              " parameter names for ", model.params.size(), " parameters");
  // The device type, not its index: each rank has its own GPU.
  std::vector<std::string> facts{
      "loss " + loss_name(model.loss),
      "device type " + c10::DeviceTypeName(model.device.type(), /*lower_case=*/true)};
  for (size_t l = 0; l < model.layers.size(); ++l) {
    facts.push_back(
        c10::str("layer ", l, " activation ", activation_name(model.layers[l].activation)));
  }
  data_parallel::replicate_from_rank0(group, model.params, names, facts, "torchext.Trainer");
  impl_->reducer = std::make_unique<train::GradientReducer>(group);
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
ProcessGroupPtr TrainerCore::process_group() const {
  return impl_->reducer ? impl_->reducer->group() : ProcessGroupPtr();
}
int TrainerCore::rank() const { return impl_->reducer ? impl_->reducer->rank() : 0; }
int TrainerCore::world_size() const { return impl_->reducer ? impl_->reducer->world_size() : 1; }

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
  at::NoGradGuard no_grad;
  std::vector<SGDGroup> groups;
  try {
    impl.refresh(who);
    train::check_batch(impl.model, x, y, who, /*check_target_range=*/impl.model.device.is_cpu());
    groups = impl.begin_training(optimizer, who);
    const at::Tensor xc = x.contiguous(), yc = y.contiguous();
    impl.ensure_workspace(xc.size(0));
    impl.forward_backward(xc, yc, /*backward=*/true);
  } catch (...) {
    impl.stop_others(who);  // data-parallel: the others wait in this step's all-reduce
    throw;
  }
  const at::Tensor loss = copy_of_loss(impl.loss());  // this rank's, as in a DDP loop
  impl.reduce(who);
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
