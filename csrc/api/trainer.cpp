// torchext::Trainer (see torchext/trainer.h): TrainerCore driven by a
// torchext::nn::MLP and a torchext::optim::SGD.
#include <torchext/serialize.h>
#include <torchext/trainer.h>
#include <torchext/version.h>

#include <functional>
#include <unordered_map>

namespace torchext {

// The optimizer as the core sees it: param groups read at every call, new
// momentum buffers stored into the optimizer's state.
class Trainer::OptimizerAdapter final : public OptimizerLink {
 public:
  OptimizerAdapter(optim::SGD& optimizer, const std::vector<at::Tensor>& params,
                   std::shared_ptr<LossScaler> scaler)
      : optimizer_(optimizer), params_(params), scaler_(std::move(scaler)) {
    for (size_t i = 0; i < params.size(); ++i) {
      index_[params[i].unsafeGetTensorImpl()] = static_cast<int64_t>(i);
    }
  }

  std::vector<SGDGroup> read_groups() override {
    std::vector<SGDGroup> out;
    for (const auto& group : optimizer_.param_groups()) {
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
        auto it = index_.find(p.unsafeGetTensorImpl());
        if (it == index_.end()) {
          continue;  // not the model's: the loss gives it no gradient, so no update
        }
        spec.params.push_back(it->second);
        if (options.momentum() != 0) {
          spec.momentum_buffers.push_back(optimizer_.momentum_buffer(p));
        }
      }
      out.push_back(std::move(spec));
    }
    return out;
  }

  LossScaler read_loss_scaler() override {
    if (!scaler_) return OptimizerLink::read_loss_scaler();
    scaler_->prepare(params_.front().device());
    return *scaler_;
  }

  void store_new_buffers(const std::vector<NewMomentumBuffer>& buffers) override {
    size_t stored = 0;
    try {
      for (; stored < buffers.size(); ++stored) {
        optimizer_.set_momentum_buffer(params_[buffers[stored].param], buffers[stored].buffer);
      }
    } catch (...) {  // all or nothing (see OptimizerLink)
      for (size_t i = 0; i < stored; ++i) {
        optimizer_.set_momentum_buffer(params_[buffers[i].param], {});
      }
      throw;
    }
  }

 private:
  optim::SGD& optimizer_;
  const std::vector<at::Tensor>& params_;  // the core's parameters
  std::unordered_map<const void*, int64_t> index_;
  std::shared_ptr<LossScaler> scaler_;
};

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

TrainerCore make_core(const nn::MLP& model, const TrainerOptions& options) {
  const Loss loss = loss_from_name(options.loss());
  const Precision precision = precision_from_name(options.precision());
  if (!options.process_group()) return TrainerCore(dense_layers(model), loss, precision);
  TORCH_CHECK(precision == Precision::Default, "torchext::Trainer: precision '",
              options.precision(),
              "' is not supported in data-parallel training yet; leave it out, or train in one "
              "process");
  // The core's parameters (W0, b0, W1, ...) named as in the model's state dict.
  std::unordered_map<const void*, std::string> names;
  for (const auto& item : model->named_parameters()) {
    names[item.value().unsafeGetTensorImpl()] = item.key();
  }
  DataParallelOptions data_parallel{options.process_group(), {}};
  for (const DenseLayer& layer : dense_layers(model)) {
    for (const at::Tensor* t : {&layer.weight, &layer.bias}) {
      if (t->defined()) data_parallel.parameter_names.push_back(names[t->unsafeGetTensorImpl()]);
    }
  }
  return TrainerCore(dense_layers(model), loss, data_parallel);
}

// A non-owning shared_ptr (aliasing constructor with an empty owner).
std::shared_ptr<optim::SGD> borrow(optim::SGD& optimizer) {
  return std::shared_ptr<optim::SGD>(std::shared_ptr<void>(), &optimizer);
}

}  // namespace

Trainer::Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer, const std::string& loss)
    : Trainer(std::move(model), std::move(optimizer), TrainerOptions().loss(loss)) {}

Trainer::Trainer(nn::MLP model, optim::SGD& optimizer, const TrainerOptions& options)
    : Trainer(std::move(model), borrow(optimizer), options) {}

Trainer::Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer,
                 const TrainerOptions& options)
    : model_(std::move(model)),
      optimizer_(std::move(optimizer)),
      scaler_(precision_from_name(options.precision()) == Precision::FP16Mixed
                  ? std::make_shared<LossScaler>(options.scaler())
                  : nullptr),
      core_(make_core(model_, options)) {
  TORCH_CHECK(optimizer_ != nullptr, "torchext::Trainer: the optimizer is null");
  std::unordered_map<const void*, bool> owned;
  for (const auto& group : optimizer_->param_groups()) {
    for (const auto& p : group.params()) {
      owned[p.unsafeGetTensorImpl()] = true;
    }
  }
  for (const auto& item : model_->named_parameters()) {
    TORCH_CHECK(
        !item.value().requires_grad() || owned.count(item.value().unsafeGetTensorImpl()) != 0,
        "torchext::Trainer: the optimizer does not own the model's parameter '", item.key(),
        "' (it is in none of its param groups)");
  }
  adapter_ = std::make_unique<OptimizerAdapter>(*optimizer_, core_.parameters(), scaler_);
}

Trainer::Trainer(nn::MLP model, optim::SGD& optimizer, const std::string& loss)
    : Trainer(std::move(model), borrow(optimizer), loss) {}

LossScaler& Trainer::scaler() {
  TORCH_CHECK(scaler_ != nullptr,
              "torchext::Trainer::scaler: only a 16-mixed trainer has a "
              "loss scaler; this one's precision is '",
              precision(), "'");
  return *scaler_;
}

Trainer::~Trainer() = default;
// The adapter refers to the optimizer and the core's parameters, which stay where they are.
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;

void Trainer::check_model_unchanged(const char* who) const {
  // The core re-checks each parameter's shape, dtype, device and flags itself;
  // here: are they still the model's tensors (a layer's weight may have been
  // replaced by another tensor, which the core would never see)?
  const auto& layers = model_->layers();
  const auto& params = core_.parameters();
  size_t p = 0;
  bool same = true;
  for (size_t l = 0; l < layers.size() && same; ++l) {
    same = p < params.size() && layers[l]->weight.is_same(params[p++]);
    if (same && layers[l]->bias.defined()) {
      same = p < params.size() && layers[l]->bias.is_same(params[p++]);
    }
  }
  TORCH_CHECK(same && p == params.size(), who,
              ": the model's layers or parameters were replaced since the Trainer was built; "
              "build the optimizer and the Trainer again for the model as it is now");
}

at::Tensor Trainer::step(const at::Tensor& x, const at::Tensor& y) {
  check_model_unchanged("torchext::Trainer::step");
  return core_.step(x, y, *adapter_);
}

std::vector<double> Trainer::fit(const at::Tensor& x, const at::Tensor& y,
                                 const FitOptions& options, const ProgressCallback& progress) {
  check_model_unchanged("torchext::Trainer::fit");
  return core_.fit(x, y, *adapter_, options, progress);
}

double Trainer::evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size) {
  check_model_unchanged("torchext::Trainer::evaluate");
  return core_.evaluate(x, y, batch_size);
}

at::Tensor Trainer::predict(const at::Tensor& x) {
  check_model_unchanged("torchext::Trainer::predict");
  return core_.predict(x);
}

// ---------------------------------------------------------------------------
// Checkpoints

c10::IValue Trainer::state_dict() const {
  auto hold = core_.lock().acquire(TrainerLock::Access::Read, "torchext::Trainer::state_dict");
  return current_state();
}

c10::IValue Trainer::current_state() const {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("model", torchext::state_dict(*model_));
  dict.insert("optimizer", optimizer_state_dict(*optimizer_));
  dict.insert("step", core_.steps());
  dict.insert("torchext_version", version());
  if (scaler_) dict.insert("scaler", loss_scaler_state_dict(*scaler_));
  return dict;
}

void Trainer::load_state_dict(const c10::IValue& state) {
  load_checked([&] { return state; }, "torchext::Trainer::load_state_dict");
}

void Trainer::load_checked(const std::function<c10::IValue()>& read_state, const char* who) {
  auto hold = core_.lock().acquire(TrainerLock::Access::Write, who);
  c10::IValue state;
  int64_t step = 0;
  const auto check = [&] {
    state = read_state();
    TORCH_CHECK(state.isGenericDict(), who, ": a checkpoint must be a dict, got ", state.tagKind());
    auto dict = state.toGenericDict();
    for (const char* key : {"model", "optimizer", "step"}) {
      TORCH_CHECK(dict.contains(key), who, ": not a torchext.Trainer checkpoint: missing '", key,
                  "'");
    }
    const c10::IValue saved_step = dict.at("step");
    TORCH_CHECK(saved_step.isInt() && saved_step.toInt() >= 0, who,
                ": 'step' must be a non-negative integer, got ",
                saved_step.isInt() ? std::to_string(saved_step.toInt()) : saved_step.tagKind());
    step = saved_step.toInt();
    check_state_dict(*model_, dict.at("model"));
    if (scaler_ && dict.contains("scaler")) check_loss_scaler_state_dict(dict.at("scaler"), who);
  };
  const ProcessGroupPtr group = core_.process_group();
  if (!group) {
    check();
  } else {
    // Every rank checks its state, then all compare: the same step and checksum
    // everywhere, or every rank raises and none changes.
    std::exception_ptr failure;
    int64_t digest = 0;
    try {
      check();
      digest = std::stoll(checkpoint_checksum(state).substr(5, 15), nullptr, 16);
    } catch (...) {
      failure = std::current_exception();
    }
    data_parallel::agree(group, core_.parameters().front().device(), failure == nullptr,
                         {{"the state's step count", step}, {"the state's checksum", digest}}, who);
    if (failure) std::rethrow_exception(failure);
  }
  // Everything is checked before anything changes: the model state above, the
  // optimizer state inside its load (which checks it all before it applies it).
  auto dict = state.toGenericDict();
  load_optimizer_state_dict(*optimizer_, dict.at("optimizer"));
  torchext::load_state_dict(*model_, dict.at("model"));
  if (scaler_ && dict.contains("scaler")) load_loss_scaler_state_dict(*scaler_, dict.at("scaler"));
  core_.set_steps(step);
}

void Trainer::save(const std::string& path) const {
  // Held until the file is written: the tensors in the state are the live ones.
  const char* who = "torchext::Trainer::save";
  auto hold = core_.lock().acquire(TrainerLock::Access::Read, who);
  const ProcessGroupPtr group = core_.process_group();
  std::exception_ptr failure;
  if (!group || group->getRank() == 0) {  // data-parallel: every rank holds the same state
    try {
      c10::IValue state = current_state();
      state.toGenericDict().insert("checksum", checkpoint_checksum(state));
      torchext::save(state, path);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (group) {  // the others wait for rank 0, and learn whether it wrote the file
    data_parallel::agree(group, core_.parameters().front().device(), failure == nullptr, {}, who);
  }
  if (failure) std::rethrow_exception(failure);
}

void Trainer::load(const std::string& path) {
  load_checked(
      [&] {
        c10::IValue state = torchext::load(path);
        verify_checkpoint_checksum(state, path, "torchext::Trainer::load");
        return state;
      },
      "torchext::Trainer::load");
}

}  // namespace torchext
