// torchext::nn::Linear and MLP (see torchext/nn.h).
#include <torchext/activation_loss.h>
#include <torchext/nn.h>
#include <torchext/ops.h>

#include <torch/nn/init.h>

#include <cmath>

namespace torchext::nn {

// ---------------------------------------------------------------------------
// Linear

LinearOptions::LinearOptions(int64_t in_features, int64_t out_features)
    : in_features_(in_features), out_features_(out_features) {}

LinearImpl::LinearImpl(const LinearOptions& options_) : options(options_) { LinearImpl::reset(); }

void LinearImpl::reset() {
  TORCH_CHECK(options.in_features() >= 0 && options.out_features() >= 0,
              "torchext::nn::Linear: in_features and out_features must be non-negative, got ",
              options.in_features(), " and ", options.out_features());
  // Allocation order (weight, then bias) and the init calls below are those of
  // torch.nn.Linear, so both draw the same numbers from the generator.
  weight =
      register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty(options.out_features()));
  } else {
    bias = register_parameter("bias", {}, /*requires_grad=*/false);
  }
  reset_parameters();
}

void LinearImpl::reset_parameters() {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const auto fan_in = options.in_features();
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << "torchext::nn::Linear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

torch::Tensor LinearImpl::forward(const torch::Tensor& input) {
  return torchext::linear(input, weight,
                          bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
}

// ---------------------------------------------------------------------------
// MLP

MLPOptions::MLPOptions(std::vector<int64_t> sizes) : sizes_(std::move(sizes)) {}

MLPImpl::MLPImpl(const MLPOptions& options_) : options(options_) { MLPImpl::reset(); }

void MLPImpl::reset() {
  const auto& sizes = options.sizes();
  TORCH_CHECK(sizes.size() >= 2,
              "torchext::nn::MLP needs at least two sizes (input and output), got ", sizes.size());
  for (auto size : sizes) {
    TORCH_CHECK(size >= 0, "torchext::nn::MLP: sizes must be non-negative, got ", size);
  }
  // Validates the name ("unknown activation ..." otherwise).
  const bool with_activation = activation_from_name(options.activation()) != Activation::Identity;
  layers_.clear();
  // Python's MLP is an nn.Sequential with the activation modules at odd indices;
  // registering the Linear layers under those Sequential indices gives the same
  // parameter names ("0.weight", "2.weight", ...).
  const size_t stride = with_activation ? 2 : 1;
  for (size_t i = 0; i + 1 < sizes.size(); ++i) {
    layers_.push_back(
        register_module(std::to_string(i * stride),
                        Linear(LinearOptions(sizes[i], sizes[i + 1]).bias(options.bias()))));
  }
}

void MLPImpl::pretty_print(std::ostream& stream) const {
  stream << "torchext::nn::MLP(sizes=" << c10::IntArrayRef(options.sizes())
         << ", activation=" << options.activation()
         << ", bias=" << (options.bias() ? "true" : "false") << ")";
}

torch::Tensor MLPImpl::forward(torch::Tensor input) {
  const Activation activation = activation_from_name(options.activation());
  for (size_t i = 0; i < layers_.size(); ++i) {
    input = layers_[i]->forward(input);
    if (i + 1 == layers_.size()) {
      break;
    }
    switch (activation) {
      case Activation::Identity: break;
      case Activation::ReLU: input = torch::relu(input); break;
      case Activation::Tanh: input = torch::tanh(input); break;
      case Activation::Sigmoid: input = torch::sigmoid(input); break;
      case Activation::GELU: input = torch::gelu(input); break;
    }
  }
  return input;
}

}  // namespace torchext::nn
