// The activations and losses the training core computes, and their names.
//
// Shared by the training core (csrc/train), the C++ modules (torchext::nn::MLP
// names its activation with these strings) and the Python binding, so that a
// model description means the same thing everywhere.
#pragma once

#include <string>

namespace torchext {

enum class Activation { Identity, ReLU, Tanh, Sigmoid, GELU };
enum class Loss { MSE, CrossEntropy };

// "identity", "relu", "tanh", "sigmoid", "gelu" (exact, erf) / "mse", "cross_entropy".
// An unknown name raises c10::Error listing the known ones.
Activation activation_from_name(const std::string& name);
Loss loss_from_name(const std::string& name);
std::string activation_name(Activation activation);
std::string loss_name(Loss loss);

}  // namespace torchext
