// torch.save-compatible files and Python-layout state dicts (see torchext/serialize.h).
#include <torchext/serialize.h>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <c10/util/StringUtil.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <random>
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

  // Atomic replace: a crash mid-write never leaves a truncated checkpoint behind.
  const std::string tmp = path + ".tmp" + std::to_string(std::random_device{}());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out.good(), "torchext::save: cannot open '", tmp, "' for writing");
    out.write(archive.data(), static_cast<std::streamsize>(archive.size()));
    out.flush();
    if (!out.good()) {
      out.close();
      std::remove(tmp.c_str());
      TORCH_CHECK(false, "torchext::save: writing '", tmp, "' failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, "torchext::save: cannot rename '", tmp, "' to '", path, "'");
  }
}

// ---------------------------------------------------------------------------
// Reading Python's OrderedDicts
//
// TorchScript's unpickler turns collections.OrderedDict() into None (it expects
// one only as a tensor's unused backward-hooks argument) and knows no POP, so the
// OrderedDict of a Python `model.state_dict()` fails to load. Before unpickling,
// the pickle is rewritten: the bytes that build an OrderedDict (the class, its
// arguments, REDUCE) become EMPTY_DICT, and the state of its BUILD (the
// `_metadata` attribute) is dropped with the BUILD. To know which bytes those
// are, the rewrite follows the pickle stack, recording where each entry's bytes
// start; an opcode it does not know leaves the pickle unchanged.

namespace {

enum class Tag : uint8_t { Other, Mark, OrderedDictClass, OrderedDict };

struct Entry {
  Tag tag;
  size_t start;  // offset in the output where this entry's bytes begin
};

c10::optional<std::string> rewrite_ordered_dicts(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  std::vector<Entry> stack;
  std::map<uint32_t, Tag> memo;
  bool changed = false;
  size_t pos = 0;
  size_t start = 0;  // output offset of the current opcode
  auto push = [&](Tag tag) { stack.push_back({tag, start}); };
  // Replaces the top n entries by one that starts where the first of them did.
  auto fold = [&](size_t n, Tag tag) -> bool {
    if (stack.size() < n || n == 0) return false;
    const size_t first = stack[stack.size() - n].start;
    stack.resize(stack.size() - n);
    stack.push_back({tag, first});
    return true;
  };
  auto mark_depth = [&]() -> size_t {  // entries above the topmost mark, mark included
    for (size_t i = stack.size(); i-- > 0;) {
      if (stack[i].tag == Tag::Mark) return stack.size() - i;
    }
    return 0;
  };
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(in[at + i]);
    return v;
  };
  while (pos < in.size()) {
    const char op = in[pos];
    start = out.size();
    size_t arg = 0;  // argument bytes after the opcode
    auto need = [&](size_t n) { return pos + 1 + n <= in.size(); };
    switch (op) {
      case '\x80': arg = 1; break;  // PROTO
      case 'c': {  // GLOBAL module\nname\n
        const size_t a = in.find('\n', pos + 1);
        const size_t b = a == std::string::npos ? a : in.find('\n', a + 1);
        if (b == std::string::npos) return c10::nullopt;
        const bool od = in.compare(pos + 1, b - pos - 1, "collections\nOrderedDict") == 0;
        push(od ? Tag::OrderedDictClass : Tag::Other);
        arg = b - pos;
        break;
      }
      case 'q': case 'r':  // BINPUT, LONG_BINPUT: the bytes stay with the top entry
        arg = op == 'q' ? 1 : 4;
        if (!need(arg) || stack.empty()) return c10::nullopt;
        memo[op == 'q' ? static_cast<uint8_t>(in[pos + 1]) : u32(pos + 1)] = stack.back().tag;
        break;
      case 'h': case 'j':  // BINGET, LONG_BINGET
        arg = op == 'h' ? 1 : 4;
        if (!need(arg)) return c10::nullopt;
        push(memo[op == 'h' ? static_cast<uint8_t>(in[pos + 1]) : u32(pos + 1)]);
        break;
      case '}': case ']': case ')': case 'N': case '\x88': case '\x89':
        push(Tag::Other); break;  // empty dict/list/tuple, None, True, False
      case 'J': push(Tag::Other); arg = 4; break;  // BININT
      case 'K': push(Tag::Other); arg = 1; break;  // BININT1
      case 'M': push(Tag::Other); arg = 2; break;  // BININT2
      case 'G': push(Tag::Other); arg = 8; break;  // BINFLOAT
      case '\x8a': case 'U': case 'C':  // LONG1, SHORT_BINSTRING, SHORT_BINBYTES
        if (!need(1)) return c10::nullopt;
        push(Tag::Other); arg = 1 + static_cast<uint8_t>(in[pos + 1]); break;
      case 'X': case 'B': case 'T':  // BINUNICODE, BINBYTES, BINSTRING
        if (!need(4)) return c10::nullopt;
        push(Tag::Other); arg = 4 + u32(pos + 1); break;
      case '(': push(Tag::Mark); break;
      case 't': case 'l': case 'd':  // TUPLE, LIST, DICT
        if (!fold(mark_depth(), Tag::Other)) return c10::nullopt;
        break;
      case '\x85': if (!fold(1, Tag::Other)) return c10::nullopt; break;  // TUPLE1
      case '\x86': if (!fold(2, Tag::Other)) return c10::nullopt; break;  // TUPLE2
      case '\x87': if (!fold(3, Tag::Other)) return c10::nullopt; break;  // TUPLE3
      case 'Q': if (!fold(1, Tag::Other)) return c10::nullopt; break;    // BINPERSID
      case 'a': case 's': case 'e': case 'u': {  // APPEND, SETITEM, APPENDS, SETITEMS
        const size_t n = op == 'a' ? 1 : op == 's' ? 2 : mark_depth();
        if (n == 0 || stack.size() < n + 1) return c10::nullopt;
        stack.resize(stack.size() - n);
        break;
      }
      case 'R': {  // REDUCE
        if (stack.size() < 2) return c10::nullopt;
        const bool od = stack[stack.size() - 2].tag == Tag::OrderedDictClass;
        const size_t first = stack[stack.size() - 2].start;
        fold(2, od ? Tag::OrderedDict : Tag::Other);
        if (od) {
          out.resize(first);
          out += '}';
          changed = true;
          ++pos;
          continue;
        }
        break;
      }
      case 'b': {  // BUILD
        if (stack.size() < 2) return c10::nullopt;
        const bool od = stack[stack.size() - 2].tag == Tag::OrderedDict;
        const size_t state = stack.back().start;
        stack.pop_back();
        if (od) {
          out.resize(state);
          changed = true;
          ++pos;
          continue;
        }
        break;
      }
      case '.':  // STOP
        out.append(in, pos, std::string::npos);
        return changed ? c10::optional<std::string>(out) : c10::nullopt;
      default:
        return c10::nullopt;
    }
    if (!need(arg)) return c10::nullopt;
    out.append(in, pos, 1 + arg);
    pos += 1 + arg;
  }
  return c10::nullopt;
}

}  // namespace

c10::IValue load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "torchext::load: cannot open '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream stream(std::string(bytes.begin(), bytes.end()));
  caffe2::serialize::PyTorchStreamReader reader(&stream);
  TORCH_CHECK(reader.hasRecord("data.pkl"), "torchext::load: '", path,
              "' is not a torch.save file (no data.pkl)");
  auto [pickle_ptr, pickle_size] = reader.getRecord("data.pkl");
  auto rewritten = rewrite_ordered_dicts(
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
    parsed.momentum(number("momentum")).dampening(number("dampening"))
        .weight_decay(number("weight_decay")).nesterov(flag("nesterov"))
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
