// Validation of the training core's inputs (see validation.h).
#include "train/validation.h"

#include <ATen/MemoryOverlap.h>

#include <c10/util/StringUtil.h>

namespace torchext::train {
namespace {

using c10::str;

// The problem with one parameter tensor on its own, or "".
std::string tensor_problem(const at::Tensor& t, const std::string& name) {
  if (!t.defined()) return name + " is undefined";
  if (t.layout() != at::kStrided) return str(name, " has layout ", t.layout(), ", not strided");
  const at::Device device = t.device();
  if (!device.is_cpu() && !device.is_cuda()) {
    return str(name, " is on ", device, "; the training core runs on CPU and CUDA devices");
  }
  if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) {
    return str(name, " is ", t.scalar_type(),
               "; the training core runs float32 and float64 models");
  }
  if (!t.is_contiguous()) return name + " is not contiguous";
  if (t.is_inference()) {
    return name +
           " is an inference tensor (made under torch.inference_mode) and cannot be "
           "trained in place";
  }
  return "";
}

}  // namespace

c10::optional<std::string> model_problem(const std::vector<DenseLayer>& layers) {
  if (layers.empty()) return std::string("the model has no layers");
  const at::Tensor& first = layers[0].weight;
  std::vector<const at::Tensor*> params;
  for (size_t l = 0; l < layers.size(); ++l) {
    const DenseLayer& layer = layers[l];
    const std::string weight = str("layer ", l, " weight");
    std::string problem = tensor_problem(layer.weight, weight);
    if (!problem.empty()) return problem;
    if (layer.weight.dim() != 2) {
      return str(weight, " must be 2-D [out_features, in_features], got shape ",
                 layer.weight.sizes());
    }
    if (layer.weight.scalar_type() != first.scalar_type() ||
        layer.weight.device() != first.device()) {
      return str(weight, " is ", layer.weight.scalar_type(), " on ", layer.weight.device(),
                 " but layer 0 weight is ", first.scalar_type(), " on ", first.device());
    }
    if (l > 0 && layer.weight.size(1) != layers[l - 1].weight.size(0)) {
      return str("layer ", l, " takes ", layer.weight.size(1), " features but layer ", l - 1,
                 " produces ", layers[l - 1].weight.size(0));
    }
    params.push_back(&layer.weight);
    if (!layer.bias.defined()) continue;
    const std::string bias = str("layer ", l, " bias");
    problem = tensor_problem(layer.bias, bias);
    if (!problem.empty()) return problem;
    if (layer.bias.dim() != 1 || layer.bias.size(0) != layer.weight.size(0)) {
      return str(bias, " must have shape [", layer.weight.size(0), "], got ", layer.bias.sizes());
    }
    if (layer.bias.scalar_type() != first.scalar_type() || layer.bias.device() != first.device()) {
      return str(bias, " is ", layer.bias.scalar_type(), " on ", layer.bias.device(),
                 " but layer 0 weight is ", first.scalar_type(), " on ", first.device());
    }
    params.push_back(&layer.bias);
  }
  // Each parameter is updated in place once per step: none may share memory.
  for (size_t i = 0; i < params.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (params[i]->numel() > 0 && params[j]->numel() > 0 &&
          at::get_overlap_status(*params[i], *params[j]) != at::MemOverlapStatus::No) {
        return str("parameters ", j, " and ", i, " share memory");
      }
    }
  }
  return c10::nullopt;
}

Model build_model(std::vector<DenseLayer> layers, Loss loss) {
  Model model;
  model.loss = loss;
  model.dtype = layers[0].weight.scalar_type();
  model.device = layers[0].weight.device();
  for (const DenseLayer& layer : layers) {
    model.weight_param.push_back(static_cast<int64_t>(model.params.size()));
    model.params.push_back(layer.weight);
    if (layer.bias.defined()) {
      model.bias_param.push_back(static_cast<int64_t>(model.params.size()));
      model.params.push_back(layer.bias);
    } else {
      model.bias_param.push_back(-1);
    }
  }
  for (const at::Tensor& p : model.params) model.shapes.emplace_back(p.sizes());
  model.trainable.assign(model.params.size(), true);
  model.layers = std::move(layers);
  return model;
}

bool parameters_unchanged(const Model& model) {
  for (size_t i = 0; i < model.params.size(); ++i) {
    const at::Tensor& p = model.params[i];
    if (p.layout() != at::kStrided || p.scalar_type() != model.dtype ||
        p.device() != model.device || p.sizes() != c10::IntArrayRef(model.shapes[i]) ||
        !p.is_contiguous()) {
      return false;
    }
  }
  return true;
}

void read_trainable(Model& model) {
  for (size_t i = 0; i < model.params.size(); ++i) {
    model.trainable[i] = model.params[i].requires_grad();
  }
}

void check_samples(const at::Tensor& x, const at::Tensor& y, const char* who) {
  TORCH_CHECK(x.dim() >= 1 && y.dim() >= 1 && x.size(0) == y.size(0), who, ": x has ",
              x.dim() >= 1 ? x.size(0) : 0, " samples but y has ", y.dim() >= 1 ? y.size(0) : 0);
}

void check_batch(const Model& model, const at::Tensor& x, const at::Tensor& y, const char* who,
                 bool check_target_range) {
  TORCH_CHECK(x.defined() && y.defined(), who, ": x and y must be defined tensors");
  TORCH_CHECK(x.layout() == at::kStrided && y.layout() == at::kStrided, who,
              ": x and y must be dense (strided) tensors, got ", x.layout(), " and ", y.layout());
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
    return;
  }
  TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0), who,
              ": target must be class indices of shape [", x.size(0), "] for cross_entropy, got ",
              y.sizes());
  TORCH_CHECK(y.scalar_type() == at::kLong, who,
              ": cross_entropy targets must be int64 class indices, got ", y.scalar_type());
  if (!check_target_range) return;
  const int64_t classes = model.out_features();
  if (!y.device().is_cpu()) {
    const auto [min, max] = at::aminmax(y);
    const int64_t lo = min.item<int64_t>(), hi = max.item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < classes, who, ": class index ", lo < 0 ? lo : hi,
                " is out of range for ", classes, " classes");
    return;
  }
  // On the host a plain loop: aminmax and two item() calls cost more than the
  // rest of a small step's checks together.
  const at::Tensor targets = y.contiguous();
  const int64_t* index = targets.const_data_ptr<int64_t>();
  for (int64_t i = 0, n = targets.numel(); i < n; ++i) {
    TORCH_CHECK(index[i] >= 0 && index[i] < classes, who, ": class index ", index[i],
                " is out of range for ", classes, " classes");
  }
}

void check_groups(const Model& model, const std::vector<SGDGroup>& groups, const char* who) {
  std::vector<int> owner(model.params.size(), -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    const SGDGroup& group = groups[g];
    const size_t expected_buffers = group.options.momentum != 0 ? group.params.size() : 0;
    TORCH_CHECK(group.momentum_buffers.size() == expected_buffers, who, ": group ", g, " has ",
                group.momentum_buffers.size(), " momentum buffer slots for ", group.params.size(),
                " parameters with momentum ", group.options.momentum);
    for (size_t j = 0; j < group.params.size(); ++j) {
      const int64_t i = group.params[j];
      TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(model.params.size()), who, ": group ", g,
                  " names parameter ", i, " but the model has ", model.params.size());
      TORCH_CHECK(owner[i] < 0, who, ": parameter ", i, " is in groups ", owner[i], " and ", g);
      owner[i] = static_cast<int>(g);
      if (expected_buffers == 0 || !model.trains(i) || !group.momentum_buffers[j].defined()) {
        continue;
      }
      const at::Tensor& buf = group.momentum_buffers[j];
      const at::Tensor& p = model.params[i];
      TORCH_CHECK(buf.layout() == at::kStrided && buf.sizes() == p.sizes() &&
                      buf.scalar_type() == p.scalar_type() && buf.device() == p.device(),
                  who, ": the momentum buffer of parameter ", i, " (group ", g, ") is ",
                  buf.scalar_type(), " ", buf.sizes(), " on ", buf.device(),
                  " but the parameter is ", p.scalar_type(), " ", p.sizes(), " on ", p.device());
      TORCH_CHECK(at::has_internal_overlap(buf) != at::MemOverlap::Yes && !buf.is_inference(), who,
                  ": the momentum buffer of parameter ", i,
                  " cannot be updated in place (an expanded or inference tensor)");
    }
  }
  for (size_t i = 0; i < owner.size(); ++i) {
    TORCH_CHECK(owner[i] >= 0 || !model.trainable[i], who, ": parameter ", i,
                " requires grad but is in no optimizer group; the optimizer must own every "
                "trainable parameter");
  }
}

}  // namespace torchext::train
