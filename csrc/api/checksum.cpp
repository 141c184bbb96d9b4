// The checksum of a checkpoint (see torchext/serialize.h).
//
// SHA-1 over a canonical encoding of the checkpoint dict without its "checksum"
// entry. Python's torchext.Trainer (torchext/_checkpoint.py) computes the same
// encoding, so either language verifies the other's files:
//   None N | bool T or F | int I<decimal>; | float D<8 bytes, IEEE 754 little-endian>
//   str S<byte length>:<UTF-8> | list or tuple L<length>:<items>
//   dict M<length>:<key><value>... in stored order
//   tensor X<dtype name>[<sizes, comma-separated>]<bytes of the contiguous values>
// (dtype names as Python prints them without "torch.": float32, int64, ...).
#include <torchext/serialize.h>

#include <c10/util/hash.h>

#include <cstring>

namespace torchext {
namespace {

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

void encode(const c10::IValue& value, std::string& out) {
  if (value.isNone()) {
    out += 'N';
  } else if (value.isBool()) {
    out += value.toBool() ? 'T' : 'F';
  } else if (value.isInt()) {
    out += 'I' + std::to_string(value.toInt()) + ';';
  } else if (value.isDouble()) {
    const double d = value.toDouble();
    char bytes[sizeof(double)];
    std::memcpy(bytes, &d, sizeof(double));  // little-endian hosts, as torch.save assumes
    out += 'D';
    out.append(bytes, sizeof(double));
  } else if (value.isString()) {
    const std::string& s = value.toStringRef();
    out += 'S' + std::to_string(s.size()) + ':' + s;
  } else if (value.isList() || value.isTuple()) {
    const auto items = value.isList() ? value.toListRef() : value.toTupleRef().elements();
    out += 'L' + std::to_string(items.size()) + ':';
    for (const auto& item : items) encode(item, out);
  } else if (value.isGenericDict()) {
    const auto dict = value.toGenericDict();
    out += 'M' + std::to_string(dict.size()) + ':';
    for (const auto& item : dict) {
      encode(item.key(), out);
      encode(item.value(), out);
    }
  } else if (value.isTensor()) {
    const at::Tensor t = value.toTensor().detach().to(at::kCPU).contiguous();
    out += 'X' + dtype_name(t.scalar_type()) + '[';
    for (int64_t d = 0; d < t.dim(); ++d) {
      if (d) out += ',';
      out += std::to_string(t.size(d));
    }
    out += ']';
    out.append(static_cast<const char*>(t.const_data_ptr()), t.numel() * t.element_size());
  } else {
    TORCH_CHECK(false, "torchext: a checkpoint cannot hold a ", value.tagKind(),
                " (no checksum for it)");
  }
}

}  // namespace

std::string checkpoint_checksum(const c10::IValue& checkpoint) {
  TORCH_CHECK(checkpoint.isGenericDict(), "torchext: a checkpoint must be a dict, got ",
              checkpoint.tagKind());
  const auto dict = checkpoint.toGenericDict();
  auto is_checksum = [](const c10::IValue& key) {
    return key.isString() && key.toStringRef() == "checksum";
  };
  size_t entries = 0;
  for (const auto& item : dict) entries += is_checksum(item.key()) ? 0 : 1;
  // One string: c10::sha1 hashes a whole string at once.
  std::string encoded = 'M' + std::to_string(entries) + ':';
  for (const auto& item : dict) {
    if (is_checksum(item.key())) continue;
    encode(item.key(), encoded);
    encode(item.value(), encoded);
  }
  return "sha1:" + c10::sha1(encoded).str();
}

void verify_checkpoint_checksum(const c10::IValue& checkpoint, const std::string& path,
                                const char* who) {
  TORCH_CHECK(checkpoint.isGenericDict(), who, ": '", path,
              "' is not a torchext.Trainer checkpoint (it holds a ", checkpoint.tagKind(),
              ", not a dict)");
  const auto dict = checkpoint.toGenericDict();
  const auto it = dict.find("checksum");
  if (it == dict.end()) return;  // written before checkpoints had checksums, or by hand
  TORCH_CHECK(
      it->value().isString() && it->value().toStringRef() == checkpoint_checksum(checkpoint), who,
      ": '", path, "' is damaged: its contents do not match its checksum");
}

}  // namespace torchext
