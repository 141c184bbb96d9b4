// TrainerCore: construction, the per-call checks, step and predict. fit and
// evaluate are in fit_loop.cpp, the update in update.cpp, validation in
// validation.cpp, the step itself in step_cpu.cpp (fused kernels, CPU) and
// step_aten.cpp (ATen operators: CUDA, and the CPU reference).
#include <torchext/trainer_core.h>

#include "train/core_impl.h"
#include "train/update.h"
#include "train/validation.h"

#include <c10/core/GradMode.h>
#include <c10/util/StringUtil.h>

namespace torchext {

using train::Model;

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
  impl_->reference_kernels = enabled;
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
    impl.ws.ensure(impl.model, xc.size(0));
    impl.forward_backward(xc, yc, /*backward=*/true);
  } catch (...) {
    impl.stop_others(who);  // data-parallel: the others wait in this step's all-reduce
    throw;
  }
  const at::Tensor loss = impl.ws.loss.clone();  // this rank's, as in a DDP loop
  impl.reduce(who);
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
