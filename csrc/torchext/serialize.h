// torch.save-compatible files from C++, and Python-layout state dicts.
//
// torchext::save writes an IValue the way Python's torch.save writes an object:
// a zip archive with data.pkl (a plain pickle: dicts, lists, ints, floats, bools,
// strings, None and tensors, without TorchScript's type tags, so Python's
// torch.load(path) with its default weights_only=True reads it) and one
// data/<key> record per tensor. torchext::load reads files written by either
// (an OrderedDict comes back as a generic dict).
//
// The state-dict helpers use Python's layouts: a module's {name: tensor} in
// torch.nn.Module.state_dict() order, and torch.optim.SGD.state_dict()'s
// {"state": {index: {"momentum_buffer": tensor}}, "param_groups": [...]}.
#pragma once

#include <torchext/optim.h>

#include <ATen/core/ivalue.h>
#include <torch/nn/module.h>

#include <string>

namespace torchext {

// Writes `value` to `path` in torch.save's format, atomically (a temporary file
// in the same folder, flushed, then one rename), writing through a symbolic link
// and refusing to replace anything but a regular file; the file gets the mode
// torch.save would give it (see csrc/api/checkpoint_file.h for every rule).
// Tensors on other devices are copied to CPU for writing and keep their device
// name (torch.load puts them back there).
void save(const c10::IValue& value, const std::string& path);

// Reads a file written by torch.save (Python) or torchext::save; tensors come back
// on CPU. A missing, empty, truncated, damaged or foreign file raises one sentence
// naming the file and the problem.
c10::IValue load(const std::string& path);

// "sha1:<hex>" over every entry of the checkpoint dict except "checksum", in the
// canonical encoding Python's torchext.Trainer uses too (see csrc/api/checksum.cpp).
std::string checkpoint_checksum(const c10::IValue& checkpoint);
// Raises "'<path>' is damaged" when the dict's "checksum" entry does not match its
// contents; a dict without one passes (files written by hand or by older versions).
void verify_checkpoint_checksum(const c10::IValue& checkpoint, const std::string& path,
                                const char* who);

// {name: tensor} of the module's parameters and buffers, detached, in the order
// of torch.nn.Module.state_dict() (per module: parameters, then buffers).
c10::IValue state_dict(const torch::nn::Module& module);

// Raises the c10::Error load_state_dict would raise for `state` (keys, and every
// value a tensor of the entry's shape that can be copied into it), changing nothing.
void check_state_dict(const torch::nn::Module& module, const c10::IValue& state);

// Copies a state dict (as from state_dict or a Python `model.state_dict()` file)
// into the module's parameters and buffers. Keys and shapes must match exactly;
// on a mismatch, c10::Error names it and nothing changes.
void load_state_dict(torch::nn::Module& module, const c10::IValue& state);
// The same from a file written by torch.save(model.state_dict(), path).
void load_state_dict(torch::nn::Module& module, const std::string& path);

// The optimizer's state in torch.optim.SGD.state_dict()'s layout; parameters are
// numbered across groups in order, as Python does.
c10::IValue optimizer_state_dict(const optim::SGD& optimizer);

// Restores hyper-parameters and momentum buffers from that layout (written by
// Python's torch.optim.SGD / torchext.optim.SGD or by optimizer_state_dict).
// Group count and sizes must match; on a mismatch nothing changes.
void load_optimizer_state_dict(optim::SGD& optimizer, const c10::IValue& state);

}  // namespace torchext
