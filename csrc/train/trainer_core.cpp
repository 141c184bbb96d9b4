// TrainerCore: validation, workspaces, the SGD update, and the fit/evaluate loops.
//
// Every public entry point validates all of its arguments before it writes
// anything, so a bad call raises a c10::Error and leaves parameters and momentum
// buffers as they were. The step itself is step_cpu.cpp (fused kernels, CPU) or
// step_aten.cpp (ATen operators, CUDA), followed by one fused SGD op per group.
#include <torchext/trainer_core.h>

#include "train/model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <map>

namespace torchext {

using train::Model;
using train::Workspace;

// ---------------------------------------------------------------------------
// Names.

Activation activation_from_name(const std::string& name) {
  static const std::map<std::string, Activation> names = {
      {"identity", Activation::Identity}, {"relu", Activation::ReLU},
      {"tanh", Activation::Tanh},         {"sigmoid", Activation::Sigmoid},
      {"gelu", Activation::GELU}};
  auto it = names.find(name);
  TORCH_CHECK(it != names.end(), "torchext: unknown activation '", name,
              "'; expected identity, relu, tanh, sigmoid or gelu");
  return it->second;
}

Loss loss_from_name(const std::string& name) {
  if (name == "mse") return Loss::MSE;
  if (name == "cross_entropy") return Loss::CrossEntropy;
  TORCH_CHECK(false, "torchext: unknown loss '", name, "'; expected mse or cross_entropy");
}

std::string activation_name(Activation activation) {
  switch (activation) {
    case Activation::Identity: return "identity";
    case Activation::ReLU: return "relu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::GELU: return "gelu";
  }
  return "?";
}

std::string loss_name(Loss loss) { return loss == Loss::MSE ? "mse" : "cross_entropy"; }

// ---------------------------------------------------------------------------
// Workspaces.

void train::Workspace::ensure(const Model& model, int64_t rows) {
  if (rows <= capacity && !param_grads.empty()) return;
  const int64_t cap = std::max(rows, capacity);
  const auto options = at::TensorOptions().dtype(model.dtype).device(model.device);
  pre.assign(model.layers.size(), at::Tensor());
  out.clear();
  grad.clear();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    out.push_back(at::empty({cap, model.width(l)}, options));
    grad.push_back(at::empty({cap, model.width(l)}, options));
    if (model.layers[l].activation == Activation::GELU) {
      pre[l] = at::empty({cap, model.width(l)}, options);
    }
  }
  param_grads.clear();
  for (const at::Tensor& p : model.params) param_grads.push_back(at::empty_like(p));
  loss = at::empty({}, options);
  one = at::ones({}, options);
  total_weight = at::empty({}, options);
  if (model.loss == Loss::CrossEntropy) {
    log_probs = at::empty({cap, model.out_features()}, options);
    nll_grad = at::empty({cap, model.out_features()}, options);
  }
  capacity = cap;
}

// ---------------------------------------------------------------------------
// Validation.

namespace {

Model make_model(std::vector<DenseLayer> layers, Loss loss) {
  constexpr const char* who = "torchext.Trainer";
  TORCH_CHECK(!layers.empty(), who, ": the model has no layers");
  Model model;
  model.loss = loss;
  model.dtype = layers[0].weight.scalar_type();
  model.device = layers[0].weight.device();
  TORCH_CHECK(model.dtype == at::kFloat || model.dtype == at::kDouble, who,
              ": the training core runs float32 and float64 models, got ", model.dtype);
  int64_t expected_in = -1;
  for (size_t l = 0; l < layers.size(); ++l) {
    const DenseLayer& layer = layers[l];
    TORCH_CHECK(layer.weight.defined() && layer.weight.dim() == 2, who, ": layer ", l,
                " weight must be a 2-D tensor");
    TORCH_CHECK(layer.weight.scalar_type() == model.dtype && layer.weight.device() == model.device,
                who, ": layer ", l, " weight is ", layer.weight.scalar_type(), " on ",
                layer.weight.device(), " but layer 0 is ", model.dtype, " on ", model.device);
    TORCH_CHECK(layer.weight.is_contiguous(), who, ": layer ", l, " weight must be contiguous");
    TORCH_CHECK(expected_in < 0 || layer.weight.size(1) == expected_in, who, ": layer ", l,
                " takes ", layer.weight.size(1), " features but layer ", l - 1, " produces ",
                expected_in);
    expected_in = layer.weight.size(0);
    model.weight_param.push_back(static_cast<int64_t>(model.params.size()));
    model.params.push_back(layer.weight);
    if (layer.bias.defined()) {
      TORCH_CHECK(layer.bias.dim() == 1 && layer.bias.size(0) == layer.weight.size(0), who,
                  ": layer ", l, " bias must have shape [", layer.weight.size(0), "], got ",
                  layer.bias.sizes());
      TORCH_CHECK(layer.bias.scalar_type() == model.dtype && layer.bias.device() == model.device &&
                      layer.bias.is_contiguous(),
                  who, ": layer ", l, " bias must be a contiguous ", model.dtype, " tensor on ",
                  model.device);
      model.bias_param.push_back(static_cast<int64_t>(model.params.size()));
      model.params.push_back(layer.bias);
    } else {
      model.bias_param.push_back(-1);
    }
  }
  model.layers = std::move(layers);
  return model;
}

// Parameters are the caller's tensors: catch one moved or reshaped since.
void check_params_unchanged(const Model& model) {
  for (size_t i = 0; i < model.params.size(); ++i) {
    const at::Tensor& p = model.params[i];
    TORCH_CHECK(p.device() == model.device && p.scalar_type() == model.dtype && p.is_contiguous(),
                "torchext.Trainer: parameter ", i, " is now ", p.scalar_type(), " on ", p.device(),
                " but the trainer was built for ", model.dtype, " on ", model.device,
                "; build a new Trainer after moving or converting the model");
  }
}

void check_batch(const Model& model, const at::Tensor& x, const at::Tensor& y, const char* who,
                 bool check_target_range) {
  TORCH_CHECK(x.dim() == 2, who, ": input must be 2-D [batch, ", model.in_features(),
              "], got shape ", x.sizes());
  TORCH_CHECK(x.size(1) == model.in_features(), who, ": input has ", x.size(1),
              " features but the model takes ", model.in_features(), " (input shape ", x.sizes(),
              ")");
  TORCH_CHECK(x.size(0) > 0, who, ": the input is empty (0 rows)");
  TORCH_CHECK(x.scalar_type() == model.dtype, who, ": input is ", x.scalar_type(),
              " but the model is ", model.dtype);
  TORCH_CHECK(x.device() == model.device, who, ": input is on ", x.device(),
              " but the model is on ", model.device);
  TORCH_CHECK(y.device() == model.device, who, ": target is on ", y.device(),
              " but the model is on ", model.device);
  if (model.loss == Loss::MSE) {
    TORCH_CHECK(y.dim() == 2 && y.size(0) == x.size(0) && y.size(1) == model.out_features(), who,
                ": target must have shape [", x.size(0), ", ", model.out_features(),
                "] for mse, got ", y.sizes());
    TORCH_CHECK(y.scalar_type() == model.dtype, who, ": target is ", y.scalar_type(),
                " but the model is ", model.dtype);
  } else {
    TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0), who,
                ": target must be class indices of shape [", x.size(0),
                "] for cross_entropy, got ", y.sizes());
    TORCH_CHECK(y.scalar_type() == at::kLong, who,
                ": cross_entropy targets must be int64 class indices, got ", y.scalar_type());
    // On the GPU this would cost a host synchronisation per step; there, fit and
    // evaluate check once per call and step leaves it to the device-side assert,
    // as nll_loss itself does.
    if (check_target_range) {
      const auto [min, max] = at::aminmax(y);
      const int64_t lo = min.item<int64_t>(), hi = max.item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < model.out_features(), who, ": class index ",
                  lo < 0 ? lo : hi, " is out of range for ", model.out_features(), " classes");
    }
  }
}

// Each parameter in exactly one group; buffers, where given, shaped like their parameter.
void check_groups(const Model& model, const std::vector<SGDGroup>& groups) {
  constexpr const char* who = "torchext.Trainer";
  std::vector<int> owner(model.params.size(), -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    const SGDGroup& group = groups[g];
    TORCH_CHECK(group.momentum_buffers.empty() || group.momentum_buffers.size() == group.params.size(),
                who, ": group ", g, " has ", group.momentum_buffers.size(), " momentum buffers for ",
                group.params.size(), " parameters");
    for (size_t j = 0; j < group.params.size(); ++j) {
      const int64_t i = group.params[j];
      TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(model.params.size()), who, ": group ", g,
                  " names parameter ", i, " but the model has ", model.params.size());
      TORCH_CHECK(owner[i] < 0, who, ": parameter ", i, " is in groups ", owner[i], " and ", g);
      owner[i] = static_cast<int>(g);
      if (!group.momentum_buffers.empty() && group.momentum_buffers[j].defined()) {
        const at::Tensor& buf = group.momentum_buffers[j];
        const at::Tensor& p = model.params[i];
        TORCH_CHECK(buf.sizes() == p.sizes() && buf.scalar_type() == p.scalar_type() &&
                        buf.device() == p.device(),
                    who, ": the momentum buffer of parameter ", i, " is ", buf.scalar_type(), " ",
                    buf.sizes(), " on ", buf.device(), " but the parameter is ", p.scalar_type(),
                    " ", p.sizes(), " on ", p.device());
      }
    }
  }
  for (size_t i = 0; i < owner.size(); ++i) {
    TORCH_CHECK(owner[i] >= 0, who, ": parameter ", i,
                " is in no optimizer group; the optimizer must own every model parameter");
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// TrainerCore.

struct TrainerCore::Impl {
  Model model;
  Workspace ws;
  bool reference_kernels = false;

  bool use_cpu_kernels() const { return model.device.is_cpu() && !reference_kernels; }

  void forward_backward(const at::Tensor& x, const at::Tensor& y, bool backward) {
    if (use_cpu_kernels()) {
      train::forward_backward_cpu(model, ws, x, y, backward);
    } else {
      train::forward_backward_aten(model, ws, x, y, backward);
    }
  }

  // One fused SGD op per group, on the gradients in the workspace.
  void update(std::vector<SGDGroup>& groups) {
    for (SGDGroup& group : groups) {
      if (group.params.empty()) continue;
      std::vector<at::Tensor> params, grads;
      for (int64_t i : group.params) {
        params.push_back(model.params[i]);
        grads.push_back(ws.param_grads[i]);
      }
      std::vector<at::Tensor> buffers;
      std::vector<bool> first;
      if (group.options.momentum != 0) {
        if (group.momentum_buffers.empty()) group.momentum_buffers.resize(group.params.size());
        for (size_t j = 0; j < group.params.size(); ++j) {
          at::Tensor& buf = group.momentum_buffers[j];
          first.push_back(!buf.defined());
          if (!buf.defined()) buf = at::empty_like(params[j]);  // the op sets it to the gradient
          buffers.push_back(buf);
        }
      }
      std::unique_ptr<bool[]> first_flags(new bool[first.size()]);
      std::copy(first.begin(), first.end(), first_flags.get());
      {
        // Straight to the backend kernel: the dispatcher's boxed ADInplaceOrView
        // step costs more than the update itself at small sizes. Its one job,
        // bumping the version counters of what the step writes, is done below.
        at::AutoDispatchBelowADInplaceOrView direct;
        fused_sgd_(params, grads, buffers, c10::ArrayRef<bool>(first_flags.get(), first.size()),
                   group.lr, group.options);
      }
      for (const at::Tensor& t : params) t.unsafeGetTensorImpl()->bump_version();
      for (const at::Tensor& t : buffers) t.unsafeGetTensorImpl()->bump_version();
    }
  }

  // x and y validated; contiguous copies where needed.
  at::Tensor train_step(const at::Tensor& x, const at::Tensor& y, std::vector<SGDGroup>& groups) {
    const at::Tensor xc = x.contiguous(), yc = y.contiguous();
    ws.ensure(model, xc.size(0));
    forward_backward(xc, yc, /*backward=*/true);
    update(groups);
    return ws.loss;
  }
};

TrainerCore::TrainerCore(std::vector<DenseLayer> layers, Loss loss)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = make_model(std::move(layers), loss);
}

TrainerCore::~TrainerCore() = default;
TrainerCore::TrainerCore(TrainerCore&&) noexcept = default;
TrainerCore& TrainerCore::operator=(TrainerCore&&) noexcept = default;

const std::vector<at::Tensor>& TrainerCore::parameters() const { return impl_->model.params; }
const std::vector<DenseLayer>& TrainerCore::layers() const { return impl_->model.layers; }
Loss TrainerCore::loss() const { return impl_->model.loss; }
std::string TrainerCore::backend() const { return impl_->model.device.is_cpu() ? "cpu" : "cuda"; }
void TrainerCore::use_reference_kernels(bool enabled) { impl_->reference_kernels = enabled; }

at::Tensor TrainerCore::step(const at::Tensor& x, const at::Tensor& y,
                             std::vector<SGDGroup>& groups) {
  const Model& model = impl_->model;
  check_params_unchanged(model);
  check_batch(model, x, y, "torchext.Trainer.step", /*check_target_range=*/model.device.is_cpu());
  check_groups(model, groups);
  at::NoGradGuard no_grad;
  return impl_->train_step(x, y, groups).clone();
}

std::vector<double> TrainerCore::fit(const at::Tensor& x, const at::Tensor& y,
                                     std::vector<SGDGroup>& groups, const FitOptions& options,
                                     const ProgressCallback& progress) {
  constexpr const char* who = "torchext.Trainer.fit";
  Impl& impl = *impl_;
  const Model& model = impl.model;
  TORCH_CHECK(options.batch_size >= 1, who, ": batch_size must be at least 1, got ",
              options.batch_size);
  TORCH_CHECK(options.epochs >= 0, who, ": epochs must be non-negative, got ", options.epochs);
  TORCH_CHECK(x.dim() >= 1 && y.dim() >= 1 && x.size(0) == y.size(0), who, ": x has ",
              x.dim() >= 1 ? x.size(0) : 0, " samples but y has ", y.dim() >= 1 ? y.size(0) : 0);
  check_params_unchanged(model);
  check_batch(model, x, y, who, /*check_target_range=*/true);
  check_groups(model, groups);
  TORCH_CHECK(!options.generator.has_value() || options.generator->device().is_cpu(), who,
              ": the shuffling generator must be a CPU torch.Generator");
  at::NoGradGuard no_grad;

  const int64_t samples = x.size(0);
  const int64_t batch = std::min(options.batch_size, samples);
  const int64_t steps_per_epoch = (samples + batch - 1) / batch;
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  at::Tensor x_batch = at::empty({batch, x.size(1)}, xc.options());
  at::Tensor y_batch = y.dim() == 2 ? at::empty({batch, y.size(1)}, yc.options())
                                    : at::empty({batch}, yc.options());
  impl.ws.ensure(model, batch);

  std::vector<double> epoch_losses;
  using Clock = std::chrono::steady_clock;
  auto last_report = Clock::now();
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    at::Tensor order;
    if (options.shuffle) {
      order = at::randperm(samples, options.generator, at::TensorOptions().dtype(at::kLong))
                  .to(model.device);
    }
    // On CUDA the per-step losses stay on the device until the epoch ends.
    at::Tensor device_losses = model.device.is_cpu()
                                   ? at::Tensor()
                                   : at::empty({steps_per_epoch}, xc.options());
    double weighted_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      const int64_t start = s * batch, rows = std::min(batch, samples - start);
      at::Tensor xb = x_batch.narrow(0, 0, rows), yb = y_batch.narrow(0, 0, rows);
      if (options.shuffle) {
        const at::Tensor index = order.narrow(0, start, rows);
        at::index_select_out(xb, xc, 0, index);
        at::index_select_out(yb, yc, 0, index);
      } else {
        xb = xc.narrow(0, start, rows);
        yb = yc.narrow(0, start, rows);
      }
      const at::Tensor loss = impl.train_step(xb, yb, groups);
      if (model.device.is_cpu()) {
        const double value = loss.item<double>();
        TORCH_CHECK(std::isfinite(value), who, ": the loss became ", value, " at epoch ", epoch,
                    ", step ", s, "; training stopped (lower the learning rate or check the data)");
        weighted_sum += value * static_cast<double>(rows);
      } else {
        device_losses[s].copy_(loss);
      }
      if (progress && (Clock::now() - last_report > std::chrono::milliseconds(50))) {
        if (model.device.is_cpu()) {
          progress({epoch, s + 1, steps_per_epoch,
                    weighted_sum / static_cast<double>(std::min(samples, (s + 1) * batch))});
        } else {
          progress({epoch, s + 1, steps_per_epoch, std::nan("")});
        }
        last_report = Clock::now();
      }
    }
    if (!model.device.is_cpu()) {
      const at::Tensor host = device_losses.to(at::kCPU, at::kDouble);
      const double* values = host.data_ptr<double>();
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        TORCH_CHECK(std::isfinite(values[s]), who, ": the loss became ", values[s], " at epoch ",
                    epoch, ", step ", s, "; training stopped (lower the learning rate or check "
                    "the data)");
        weighted_sum += values[s] * static_cast<double>(std::min(batch, samples - s * batch));
      }
    }
    epoch_losses.push_back(weighted_sum / static_cast<double>(samples));
    if (progress) progress({epoch, steps_per_epoch, steps_per_epoch, epoch_losses.back()});
    last_report = Clock::now();
  }
  return epoch_losses;
}

double TrainerCore::evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size) {
  constexpr const char* who = "torchext.Trainer.evaluate";
  Impl& impl = *impl_;
  check_params_unchanged(impl.model);
  TORCH_CHECK(x.dim() >= 1 && y.dim() >= 1 && x.size(0) == y.size(0), who, ": x has ",
              x.dim() >= 1 ? x.size(0) : 0, " samples but y has ", y.dim() >= 1 ? y.size(0) : 0);
  check_batch(impl.model, x, y, who, /*check_target_range=*/true);
  at::NoGradGuard no_grad;
  const int64_t samples = x.size(0);
  const int64_t batch = batch_size > 0 ? std::min(batch_size, samples) : samples;
  impl.ws.ensure(impl.model, batch);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  at::Tensor total = at::zeros({}, xc.options().dtype(at::kDouble));
  for (int64_t start = 0; start < samples; start += batch) {
    const int64_t rows = std::min(batch, samples - start);
    impl.forward_backward(xc.narrow(0, start, rows), yc.narrow(0, start, rows),
                          /*backward=*/false);
    total.add_(impl.ws.loss, static_cast<double>(rows));
  }
  return total.item<double>() / static_cast<double>(samples);
}

at::Tensor TrainerCore::predict(const at::Tensor& x) {
  Impl& impl = *impl_;
  const Model& model = impl.model;
  check_params_unchanged(model);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == model.in_features(),
              "torchext.Trainer.predict: input must have shape [batch, ", model.in_features(),
              "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == model.dtype && x.device() == model.device,
              "torchext.Trainer.predict: input must be ", model.dtype, " on ", model.device);
  at::NoGradGuard no_grad;
  const at::Tensor xc = x.contiguous();
  impl.ws.ensure(model, xc.size(0));
  const at::Tensor out = impl.use_cpu_kernels() ? train::forward_cpu(model, impl.ws, xc)
                                                : train::forward_aten(model, impl.ws, xc);
  return out.clone();
}

}  // namespace torchext
