// torchext::Trainer (see torchext/trainer.h): TrainerCore driven by a
// torchext::nn::MLP and a torchext::optim::SGD.
#include <torchext/serialize.h>
#include <torchext/trainer.h>
#include <torchext/version.h>

#include <unordered_map>

namespace torchext {

namespace {

std::vector<DenseLayer> dense_layers(const nn::MLP& model) {
  TORCH_CHECK(model, "torchext::Trainer: the model is empty (a default-constructed MLP holder)");
  const Activation activation = activation_from_name(model->options.activation());
  const auto& layers = model->layers();
  std::vector<DenseLayer> out;
  for (size_t i = 0; i < layers.size(); ++i) {
    // No activation after the last layer, as in MLP::forward.
    out.push_back({layers[i]->weight, layers[i]->bias,
                   i + 1 == layers.size() ? Activation::Identity : activation});
  }
  return out;
}

// A non-owning shared_ptr (aliasing constructor with an empty owner).
std::shared_ptr<optim::SGD> borrow(optim::SGD& optimizer) {
  return std::shared_ptr<optim::SGD>(std::shared_ptr<void>(), &optimizer);
}

}  // namespace

Trainer::Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer, const std::string& loss)
    : model_(std::move(model)),
      optimizer_(std::move(optimizer)),
      core_(dense_layers(model_), loss_from_name(loss)),
      params_(core_.parameters()) {
  TORCH_CHECK(optimizer_ != nullptr, "torchext::Trainer: the optimizer is null");
  std::unordered_map<const void*, bool> owned;
  for (const auto& group : optimizer_->param_groups()) {
    for (const auto& p : group.params()) {
      owned[p.unsafeGetTensorImpl()] = true;
    }
  }
  for (const auto& item : model_->named_parameters()) {
    TORCH_CHECK(owned.count(item.value().unsafeGetTensorImpl()) != 0,
                "torchext::Trainer: the optimizer does not own the model's parameter '",
                item.key(), "' (it is in none of its param groups)");
  }
}

Trainer::Trainer(nn::MLP model, optim::SGD& optimizer, const std::string& loss)
    : Trainer(std::move(model), borrow(optimizer), loss) {}

std::vector<SGDGroup> Trainer::groups() const {
  std::unordered_map<const void*, int64_t> index;
  for (size_t i = 0; i < params_.size(); ++i) {
    index[params_[i].unsafeGetTensorImpl()] = static_cast<int64_t>(i);
  }
  std::vector<SGDGroup> out;
  for (const auto& group : optimizer_->param_groups()) {
    const auto& options = static_cast<const optim::SGDOptions&>(group.options());
    optim::check_options(options);
    SGDGroup spec;
    spec.lr = options.lr();
    spec.options.momentum = options.momentum();
    spec.options.dampening = options.dampening();
    spec.options.weight_decay = options.weight_decay();
    spec.options.nesterov = options.nesterov();
    spec.options.maximize = options.maximize();
    for (const auto& p : group.params()) {
      auto it = index.find(p.unsafeGetTensorImpl());
      if (it == index.end()) {
        continue;  // not the model's: the loss gives it no gradient, so no update
      }
      spec.params.push_back(it->second);
      if (options.momentum() != 0) {
        spec.momentum_buffers.push_back(optimizer_->momentum_buffer(p));
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

void Trainer::store_new_buffers(const std::vector<SGDGroup>& before,
                                const std::vector<SGDGroup>& after) {
  for (size_t g = 0; g < after.size(); ++g) {
    for (size_t i = 0; i < after[g].momentum_buffers.size(); ++i) {
      if (!before[g].momentum_buffers[i].defined() && after[g].momentum_buffers[i].defined()) {
        optimizer_->set_momentum_buffer(params_[after[g].params[i]],
                                        after[g].momentum_buffers[i]);
      }
    }
  }
}

at::Tensor Trainer::step(const at::Tensor& x, const at::Tensor& y) {
  const auto before = groups();
  auto specs = before;
  auto loss = core_.step(x, y, specs);
  store_new_buffers(before, specs);
  ++steps_;
  return loss;
}

std::vector<double> Trainer::fit(const at::Tensor& x, const at::Tensor& y,
                                 const FitOptions& options, const ProgressCallback& progress) {
  const auto before = groups();
  auto specs = before;
  auto losses = core_.fit(x, y, specs, options, progress);
  store_new_buffers(before, specs);
  const int64_t samples = x.size(0);
  steps_ += options.epochs * ((samples + options.batch_size - 1) / options.batch_size);
  return losses;
}

double Trainer::evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size) {
  TORCH_CHECK(batch_size >= 0, "torchext::Trainer::evaluate: batch_size must be non-negative "
              "(0: one batch), got ", batch_size);
  return core_.evaluate(x, y, batch_size);
}

at::Tensor Trainer::predict(const at::Tensor& x) { return core_.predict(x); }

// ---------------------------------------------------------------------------
// Checkpoints

c10::IValue Trainer::state_dict() const {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("model", torchext::state_dict(*model_));
  dict.insert("optimizer", optimizer_state_dict(*optimizer_));
  dict.insert("step", steps_);
  dict.insert("torchext_version", version());
  return dict;
}

void Trainer::load_state_dict(const c10::IValue& state) {
  const char* who = "torchext::Trainer::load_state_dict";
  TORCH_CHECK(state.isGenericDict(), who, ": a checkpoint must be a dict, got ", state.tagKind());
  auto dict = state.toGenericDict();
  for (const char* key : {"model", "optimizer", "step"}) {
    TORCH_CHECK(dict.contains(key), who, ": not a torchext.Trainer checkpoint: missing '", key,
                "'");
  }
  TORCH_CHECK(dict.at("step").isInt(), who, ": 'step' must be an integer");
  // The model is checked first and the optimizer load checks everything before it
  // changes anything, so no load stops half-way.
  check_state_dict(*model_, dict.at("model"));
  load_optimizer_state_dict(*optimizer_, dict.at("optimizer"));
  torchext::load_state_dict(*model_, dict.at("model"));
  steps_ = dict.at("step").toInt();
}

void Trainer::save(const std::string& path) const { torchext::save(state_dict(), path); }

void Trainer::load(const std::string& path) { load_state_dict(torchext::load(path)); }

}  // namespace torchext
