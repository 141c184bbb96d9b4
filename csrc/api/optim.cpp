// torchext::optim::SGD (see torchext/optim.h).
#include <torchext/ops.h>
#include <torchext/optim.h>

#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <c10/util/SmallVector.h>

#include <map>
#include <tuple>

namespace torchext::optim {

// ---------------------------------------------------------------------------
// Options and state: LibTorch's archive layout, plus `maximize`.

SGDOptions::SGDOptions(double lr) : lr_(lr) {}

bool operator==(const SGDOptions& lhs, const SGDOptions& rhs) {
  return lhs.lr() == rhs.lr() && lhs.momentum() == rhs.momentum() &&
         lhs.dampening() == rhs.dampening() && lhs.weight_decay() == rhs.weight_decay() &&
         lhs.nesterov() == rhs.nesterov() && lhs.maximize() == rhs.maximize();
}

void SGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(dampening);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(nesterov);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
}

void SGDOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, dampening);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, nesterov);
  // Archives written by torch::optim::SGD have no `maximize`.
  c10::IValue maximize;
  if (archive.try_read("maximize", maximize)) {
    maximize_ = maximize.toBool();
  }
}

double SGDOptions::get_lr() const { return lr(); }

void SGDOptions::set_lr(const double lr) { this->lr(lr); }

void SGDParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum_buffer);
}

void SGDParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, momentum_buffer);
}

void check_options(const SGDOptions& options) {
  // torch.optim.SGD's messages (torch::optim::SGD uses the same words).
  TORCH_CHECK(options.lr() >= 0, "Invalid learning rate: ", options.lr());
  TORCH_CHECK(options.momentum() >= 0, "Invalid momentum value: ", options.momentum());
  TORCH_CHECK(options.weight_decay() >= 0, "Invalid weight_decay value: ", options.weight_decay());
  TORCH_CHECK(!options.nesterov() || (options.momentum() > 0 && options.dampening() == 0),
              "Nesterov momentum requires a momentum and zero dampening");
}

// ---------------------------------------------------------------------------
// SGD

SGD::SGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, SGDOptions defaults)
    : Optimizer(param_groups, std::make_unique<SGDOptions>(defaults)) {
  check_options(defaults);
  for (const auto& group : param_groups_) {
    check_options(static_cast<const SGDOptions&>(group.options()));
  }
}

torch::Tensor SGD::momentum_buffer(const torch::Tensor& param) const {
  auto it = state_.find(param.unsafeGetTensorImpl());
  if (it == state_.end()) {
    return {};
  }
  return static_cast<const SGDParamState&>(*it->second).momentum_buffer();
}

void SGD::set_momentum_buffer(const torch::Tensor& param, torch::Tensor buffer) {
  void* key = param.unsafeGetTensorImpl();
  if (!buffer.defined()) {
    state_.erase(key);
    return;
  }
  auto it = state_.find(key);
  if (it == state_.end()) {
    auto state = std::make_unique<SGDParamState>();
    state->momentum_buffer(std::move(buffer));
    state_[key] = std::move(state);
  } else {
    static_cast<SGDParamState&>(*it->second).momentum_buffer(std::move(buffer));
  }
}

namespace {

// The tensors of one fused_sgd_ call: parameters of one device and dtype.
struct Bucket {
  std::vector<torch::Tensor> params, grads, buffers;
  c10::SmallVector<bool, 16> is_first_step;  // parallel to buffers
};

}  // namespace

torch::Tensor SGD::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  // Check everything first: an error must leave parameters and state untouched.
  for (const auto& group : param_groups_) {
    check_options(static_cast<const SGDOptions&>(group.options()));
    for (const auto& p : group.params()) {
      const auto& g = p.grad();
      if (!g.defined()) {
        continue;
      }
      TORCH_CHECK(!g.is_sparse(),
                  "torchext::optim::SGD does not support sparse gradients (a "
                  "parameter of shape ",
                  p.sizes(), " has one); use torch::optim::SGD for them");
      TORCH_CHECK(
          g.sizes() == p.sizes() && g.scalar_type() == p.scalar_type() && g.device() == p.device(),
          "torchext::optim::SGD: a gradient does not match its parameter (parameter ", p.sizes(),
          " ", p.scalar_type(), " on ", p.device(), ", gradient ", g.sizes(), " ", g.scalar_type(),
          " on ", g.device(), ")");
    }
  }
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const SGDOptions&>(group.options());
    const bool with_momentum = options.momentum() != 0;
    // std::map: a deterministic bucket order, whatever the devices.
    std::map<std::tuple<int, int, int>, Bucket> buckets;
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) {
        continue;
      }
      auto& bucket = buckets[{static_cast<int>(p.device().type()), p.device().index(),
                              static_cast<int>(p.scalar_type())}];
      bucket.params.push_back(p);
      bucket.grads.push_back(p.grad());
      if (with_momentum) {
        torch::Tensor buffer = momentum_buffer(p);
        bucket.is_first_step.push_back(!buffer.defined());
        bucket.buffers.push_back(buffer.defined() ? buffer : torch::empty_like(p));
      }
    }
    SGDStepOptions step_options;
    step_options.momentum = options.momentum();
    step_options.dampening = options.dampening();
    step_options.weight_decay = options.weight_decay();
    step_options.nesterov = options.nesterov();
    step_options.maximize = options.maximize();
    for (auto& [key, bucket] : buckets) {
      fused_sgd_(bucket.params, bucket.grads, bucket.buffers, bucket.is_first_step, options.lr(),
                 step_options);
      // New buffers enter the state only once the kernel accepted the call.
      for (size_t i = 0; i < bucket.buffers.size(); ++i) {
        if (bucket.is_first_step[i]) {
          set_momentum_buffer(bucket.params[i], bucket.buffers[i]);
        }
      }
    }
  }
  return loss;
}

void SGD::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<SGDParamState, SGDOptions>(archive, *this);
}

void SGD::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<SGDParamState, SGDOptions>(archive, *this);
}

}  // namespace torchext::optim
