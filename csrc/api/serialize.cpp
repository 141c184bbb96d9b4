// torch.save-compatible files and Python-layout state dicts (see torchext/serialize.h).
#include <torchext/serialize.h>

#include "api/checkpoint_file.h"
#include "api/pickle_rewrite.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <c10/util/StringUtil.h>

#include <algorithm>
#include <map>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

namespace torchext {

// ---------------------------------------------------------------------------
// Files

void save(const c10::IValue& value, const std::string& path) {
  // TorchScript's pickler, but with tag_aggregates=false: no
  // torch.jit._pickle.restore_type_tag calls around dicts and lists, which
  // Python's weights_only unpickler rejects. Tensors become persistent ids
  // ('storage', <type>, key, location, numel) with key = index into tensorData(),
  // exactly as torch.save writes them.
  std::vector<char> pickle;
  torch::jit::Pickler pickler(
      [&](const char* data, size_t size) { pickle.insert(pickle.end(), data, data + size); },
      /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();

  std::vector<char> archive;
  {
    // Built in memory: a writer on a stream names the archive folder "archive",
    // as torch.save does when given a file object.
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
      const char* bytes = static_cast<const char*>(data);
      archive.insert(archive.end(), bytes, bytes + size);
      return size;
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    // The records torch.save adds: storages in numeric key order, their
    // alignment, and the byte order of the tensor data.
    writer.writeRecord(".format_version", "1", 1);
    writer.writeRecord(".storage_alignment", "64", 2);
    writer.writeRecord("byteorder", "little", 6);
    const auto& tensors = pickler.tensorData();
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto data = torch::jit::getWriteableTensorData(tensors[i]);
      writer.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
    }
    writer.writeEndOfFile();
  }

  detail::write_file_atomically(path, archive, "torchext::save");
}

namespace {

std::string first_line(const c10::Error& e) {
  const std::string text = e.what_without_backtrace();
  return text.substr(0, text.find('\n'));
}

// The archive's data.pkl unpickled, Python OrderedDicts first rewritten (see
// pickle_rewrite.h).
c10::IValue unpickle(caffe2::serialize::PyTorchStreamReader& reader,
                     const std::vector<char>& bytes) {
  auto [pickle_ptr, pickle_size] = reader.getRecord("data.pkl");
  auto rewritten = detail::rewrite_ordered_dicts(
      std::string(static_cast<const char*>(pickle_ptr.get()), pickle_size));
  if (!rewritten) {
    return torch::jit::pickle_load(bytes);
  }
  // The same archive with the rewritten data.pkl.
  std::vector<char> archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
      const char* chars = static_cast<const char*>(data);
      archive.insert(archive.end(), chars, chars + size);
      return size;
    });
    for (const auto& name : reader.getAllRecords()) {
      if (name == "data.pkl") {
        writer.writeRecord(name, rewritten->data(), rewritten->size());
      } else if (name != "version" && name != ".data/version" &&
                 name != ".data/serialization_id") {  // the writer adds its own
        auto [ptr, size] = reader.getRecord(name);
        writer.writeRecord(name, ptr.get(), size);
      }
    }
    writer.writeEndOfFile();
  }
  return torch::jit::pickle_load(archive);
}

}  // namespace

c10::IValue load(const std::string& path) {
  constexpr const char* who = "torchext::load";
  const std::vector<char> bytes = detail::read_checkpoint_bytes(path, who);
  TORCH_CHECK(bytes.size() >= 4 && std::equal(bytes.begin(), bytes.begin() + 4, "PK\x03\x04"), who,
              ": '", path,
              "' is not a torch.save file (not a zip archive; a file from "
              "torch.save(..., _use_new_zipfile_serialization=False) must be saved again)");
  std::istringstream stream(std::string(bytes.begin(), bytes.end()));
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> opened;
  try {
    opened = std::make_unique<caffe2::serialize::PyTorchStreamReader>(&stream);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, who, ": '", path, "' is truncated or damaged (", first_line(e), ")");
  }
  caffe2::serialize::PyTorchStreamReader& reader = *opened;
  TORCH_CHECK(reader.hasRecord("data.pkl"), who, ": '", path,
              "' is not a torch.save file (no data.pkl)");
  try {
    return unpickle(reader, bytes);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, who, ": '", path,
                "' is damaged or not a torch.save file of plain "
                "containers and tensors (",
                first_line(e), ")");
  }
}

// ---------------------------------------------------------------------------
// Module state dicts

namespace {

// Python's state_dict order: a module's own parameters, then its buffers, then
// each child's, depth first.
void collect(const torch::nn::Module& module, const std::string& prefix,
             std::vector<std::pair<std::string, at::Tensor>>& out) {
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    out.emplace_back(prefix + item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/false)) {
    out.emplace_back(prefix + item.key(), item.value());
  }
  for (const auto& child : module.named_children()) {
    collect(*child.value(), prefix + child.key() + ".", out);
  }
}

std::vector<std::pair<std::string, at::Tensor>> entries(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  collect(module, "", out);
  return out;
}

c10::impl::GenericDict as_dict(const c10::IValue& value, const char* who, const char* what) {
  TORCH_CHECK(value.isGenericDict(), who, ": ", what, " must be a dict, got ", value.tagKind());
  return value.toGenericDict();
}

// Key lookup that accepts the key types Python may have written.
c10::optional<c10::IValue> find(const c10::impl::GenericDict& dict, const c10::IValue& key) {
  auto it = dict.find(key);
  if (it == dict.end()) {
    return c10::nullopt;
  }
  return it->value();
}

double as_double(const c10::IValue& value, const char* who, const std::string& what) {
  TORCH_CHECK(value.isDouble() || value.isInt(), who, ": ", what, " must be a number, got ",
              value.tagKind());
  return value.isDouble() ? value.toDouble() : static_cast<double>(value.toInt());
}

// `saved` can be copied into `target` (copy_ casts dtype and moves devices): it holds
// data (not on the meta device), is dense, and is a number of the same kind.
void check_copyable(const at::Tensor& saved, const at::Tensor& target, const char* who,
                    const std::string& what) {
  TORCH_CHECK(saved.defined() && saved.layout() == at::kStrided && !saved.is_meta(), who, ": ",
              what, " must be a dense tensor with data, got one ",
              saved.defined() ? (saved.is_meta() ? "on the meta device" : "of another layout")
                              : "undefined");
  TORCH_CHECK(saved.is_floating_point() == target.is_floating_point() &&
                  saved.is_complex() == target.is_complex() &&
                  (saved.scalar_type() == at::kBool) == (target.scalar_type() == at::kBool),
              who, ": ", what, " is ", saved.scalar_type(), " but the module holds ",
              target.scalar_type());
}

bool as_bool(const c10::IValue& value, const char* who, const std::string& what) {
  TORCH_CHECK(value.isBool(), who, ": ", what, " must be a bool, got ", value.tagKind());
  return value.toBool();
}

}  // namespace

c10::IValue state_dict(const torch::nn::Module& module) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, tensor] : entries(module)) {
    dict.insert(name, tensor.detach());
  }
  return dict;
}

void check_state_dict(const torch::nn::Module& module, const c10::IValue& state) {
  const char* who = "torchext::load_state_dict";
  auto dict = as_dict(state, who, "the state dict");
  auto current = entries(module);
  std::vector<std::string> missing, unexpected;
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, tensor] : current) {
    by_name[name] = &tensor;
    if (dict.find(name) == dict.end()) {
      missing.push_back(name);
    }
  }
  for (const auto& item : dict) {
    TORCH_CHECK(item.key().isString(), who, ": state dict keys must be strings, got ",
                item.key().tagKind());
    if (by_name.count(item.key().toStringRef()) == 0) {
      unexpected.push_back(item.key().toStringRef());
    }
  }
  TORCH_CHECK(missing.empty() && unexpected.empty(), who,
              ": the state dict does not match the module: missing keys [",
              c10::Join(", ", missing), "], unexpected keys [", c10::Join(", ", unexpected), "]");
  for (const auto& [name, tensor] : current) {
    const auto saved = dict.at(name);
    TORCH_CHECK(saved.isTensor(), who, ": '", name, "' is a ", saved.tagKind(), ", not a tensor");
    TORCH_CHECK(saved.toTensor().sizes() == tensor.sizes(), who, ": '", name, "' has shape ",
                saved.toTensor().sizes(), " in the state dict but ", tensor.sizes(),
                " in the module");
    check_copyable(saved.toTensor(), tensor, who, "'" + name + "'");
  }
}

void load_state_dict(torch::nn::Module& module, const c10::IValue& state) {
  check_state_dict(module, state);
  auto dict = state.toGenericDict();
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : entries(module)) {
    tensor.copy_(dict.at(name).toTensor());
  }
}

void load_state_dict(torch::nn::Module& module, const std::string& path) {
  load_state_dict(module, load(path));
}

// ---------------------------------------------------------------------------
// Optimizer state dicts

c10::IValue optimizer_state_dict(const optim::SGD& optimizer) {
  c10::impl::GenericDict state(c10::IntType::get(), c10::AnyType::get());
  c10::impl::GenericList groups(c10::AnyType::get());
  int64_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    const auto& options = static_cast<const optim::SGDOptions&>(group.options());
    // torch.optim.SGD's keys, in its order. Lists are generic (not List[int]):
    // the pickler writes specialised lists as TorchScript calls.
    c10::impl::GenericDict entry(c10::StringType::get(), c10::AnyType::get());
    entry.insert("lr", options.lr());
    entry.insert("momentum", options.momentum());
    entry.insert("dampening", options.dampening());
    entry.insert("weight_decay", options.weight_decay());
    entry.insert("nesterov", options.nesterov());
    entry.insert("maximize", options.maximize());
    entry.insert("foreach", c10::IValue());
    entry.insert("differentiable", false);
    entry.insert("fused", c10::IValue());
    c10::impl::GenericList params(c10::AnyType::get());
    for (const auto& p : group.params()) {
      const auto buffer = optimizer.momentum_buffer(p);
      if (buffer.defined()) {
        c10::impl::GenericDict param_state(c10::StringType::get(), c10::AnyType::get());
        param_state.insert("momentum_buffer", buffer.detach());
        state.insert(index, param_state);
      }
      params.push_back(index++);
    }
    entry.insert("params", params);
    groups.push_back(entry);
  }
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("state", state);
  dict.insert("param_groups", groups);
  return dict;
}

void load_optimizer_state_dict(optim::SGD& optimizer, const c10::IValue& state) {
  const char* who = "torchext::load_optimizer_state_dict";
  auto dict = as_dict(state, who, "the optimizer state");
  auto saved_state = find(dict, "state");
  auto saved_groups = find(dict, "param_groups");
  TORCH_CHECK(saved_state && saved_groups, who,
              ": not an optimizer state dict (it needs 'state' and 'param_groups')");
  TORCH_CHECK(saved_groups->isList(), who, ": 'param_groups' must be a list");
  const auto groups = saved_groups->toListRef();
  auto& current = optimizer.param_groups();
  TORCH_CHECK(groups.size() == current.size(), who, ": the state has ", groups.size(),
              " parameter groups but the optimizer has ", current.size());

  // Parse and check everything before changing anything.
  std::vector<optim::SGDOptions> options;
  std::map<int64_t, at::Tensor> params_by_index;
  for (size_t g = 0; g < groups.size(); ++g) {
    auto group = as_dict(groups[g], who, "a parameter group");
    const std::string name = "param_groups[" + std::to_string(g) + "]";
    auto number = [&](const char* key) {
      auto value = find(group, key);
      TORCH_CHECK(value, who, ": ", name, " has no '", key, "'");
      return as_double(*value, who, name + "." + key);
    };
    auto flag = [&](const char* key) {
      auto value = find(group, key);  // absent in older files: false, as Python's default
      return value ? as_bool(*value, who, name + "." + key) : false;
    };
    optim::SGDOptions parsed(number("lr"));
    parsed.momentum(number("momentum"))
        .dampening(number("dampening"))
        .weight_decay(number("weight_decay"))
        .nesterov(flag("nesterov"))
        .maximize(flag("maximize"));
    optim::check_options(parsed);
    options.push_back(parsed);
    auto indices = find(group, "params");
    TORCH_CHECK(indices && indices->isList(), who, ": ", name, " has no 'params' list");
    const auto list = indices->toListRef();
    const auto& params = current[g].params();
    TORCH_CHECK(list.size() == params.size(), who, ": ", name, " has ", list.size(),
                " parameters but the optimizer's group has ", params.size());
    for (size_t i = 0; i < list.size(); ++i) {
      TORCH_CHECK(list[i].isInt(), who, ": ", name, ".params must hold integers");
      params_by_index[list[i].toInt()] = params[i];
    }
  }
  TORCH_CHECK(saved_state->isGenericDict(), who, ": 'state' must be a dict");
  std::vector<std::pair<at::Tensor, at::Tensor>> buffers;
  for (const auto& item : saved_state->toGenericDict()) {
    TORCH_CHECK(item.key().isInt(), who, ": 'state' keys must be parameter indices");
    auto it = params_by_index.find(item.key().toInt());
    TORCH_CHECK(it != params_by_index.end(), who, ": 'state' has an entry for parameter ",
                item.key().toInt(), ", which no group lists");
    auto param_state = as_dict(item.value(), who, "a parameter's state");
    auto buffer = find(param_state, "momentum_buffer");
    if (!buffer || buffer->isNone()) {
      continue;
    }
    TORCH_CHECK(buffer->isTensor() && buffer->toTensor().sizes() == it->second.sizes(), who,
                ": the momentum buffer of parameter ", item.key().toInt(),
                " does not match its shape ", it->second.sizes());
    check_copyable(buffer->toTensor(), it->second, who,
                   "the momentum buffer of parameter " + std::to_string(item.key().toInt()));
    // A copy on the parameter's device and dtype (Python casts the same way), so
    // the optimizer never shares a buffer with the caller's state dict.
    buffers.emplace_back(it->second, buffer->toTensor().to(it->second.options(),
                                                           /*non_blocking=*/false,
                                                           /*copy=*/true));
  }

  for (size_t g = 0; g < current.size(); ++g) {
    static_cast<optim::SGDOptions&>(current[g].options()) = options[g];
    for (const auto& p : current[g].params()) {
      optimizer.set_momentum_buffer(p, {});
    }
  }
  for (auto& [param, buffer] : buffers) {
    optimizer.set_momentum_buffer(param, std::move(buffer));
  }
}

}  // namespace torchext
