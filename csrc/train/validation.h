// Validation of everything the training core is handed: the model (when it is
// built, and again whenever its parameters changed in place), each batch, and
// the optimizer groups of each call. Each check runs before anything is
// written, so a failed one leaves parameters and optimizer state untouched.
#pragma once

#include "train/model.h"

#include <c10/util/Optional.h>

#include <string>

namespace torchext::train {

// What makes `layers` unusable for the core ("layer 1 takes 30 features but
// layer 0 produces 3000"), or nullopt when they are fine.
c10::optional<std::string> model_problem(const std::vector<DenseLayer>& layers);
// The model over `layers`, which model_problem accepted.
Model build_model(std::vector<DenseLayer> layers, Loss loss);
// Whether every parameter still has the shape, dtype, device and layout the
// model was built for (cheap: a few TensorImpl fields per parameter).
bool parameters_unchanged(const Model& model);
// Model::trainable from each parameter's requires_grad.
void read_trainable(Model& model);

// x [B, in] and y (see TrainerCore::step) against the model. The class-index
// range of cross-entropy targets costs a reduction (and, on CUDA, a host
// synchronisation), so it is checked only when asked.
void check_batch(const Model& model, const at::Tensor& x, const at::Tensor& y, const char* who,
                 bool check_target_range);
// x and y have a leading sample dimension of the same length (fit, evaluate).
void check_samples(const at::Tensor& x, const at::Tensor& y, const char* who);
// Every trainable parameter in exactly one group, no parameter in two, and each
// trainable parameter's momentum buffer, where there is one, usable in place.
void check_groups(const Model& model, const std::vector<SGDGroup>& groups, const char* who);

}  // namespace torchext::train
