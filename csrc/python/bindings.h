// Binding functions of torchext._C that live outside module.cpp, one per
// area; module.cpp's PYBIND11_MODULE calls each of them once.
#pragma once

#include <torchext/data_parallel.h>

#include <torch/csrc/utils/pybind.h>

// _C.fused_sgd_ and _C.fused_sgd_tensor_lr_ (optim_binding.cpp).
void bind_optim(pybind11::module_& m);
// _C.TrainerCore and _C.TrainerLock (trainer_binding.cpp).
void bind_trainer(pybind11::module_& m);
// _C.data_parallel (data_parallel_binding.cpp).
void bind_data_parallel(pybind11::module_& m);
// A torch.distributed.ProcessGroup as the C++ object; TypeError naming `who` otherwise.
torchext::ProcessGroupPtr process_group_from(const pybind11::handle& group, const char* who);

// The names read from a torch.optim.SGD-like optimizer at every step (by
// _C.sgd_step_ and the Trainer's optimizer link), interned once, so their hashes
// are cached and dict lookups compare pointers. Created on first use, with the
// GIL, and kept for the life of the process (optim_binding.cpp).
struct SGDKeys {
  PyObject *state, *param_groups, *params, *lr, *momentum, *dampening, *weight_decay, *nesterov,
      *maximize, *fused, *momentum_buffer;
};
const SGDKeys& sgd_keys();
