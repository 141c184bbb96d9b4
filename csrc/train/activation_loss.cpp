// Names of the activations and losses (see torchext/activation_loss.h).
#include <torchext/activation_loss.h>

#include <c10/util/Exception.h>

#include <map>

namespace torchext {

Activation activation_from_name(const std::string& name) {
  static const std::map<std::string, Activation> names = {{"identity", Activation::Identity},
                                                          {"relu", Activation::ReLU},
                                                          {"tanh", Activation::Tanh},
                                                          {"sigmoid", Activation::Sigmoid},
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

}  // namespace torchext
