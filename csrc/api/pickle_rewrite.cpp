// Rewriting Python's OrderedDicts in a pickle for TorchScript's unpickler (see
// pickle_rewrite.h; TorchScript expects an OrderedDict only as a tensor's unused
// backward-hooks argument).
//
// Before unpickling, the pickle is rewritten: the bytes that build an OrderedDict (the class, its
// arguments, REDUCE) become EMPTY_DICT, and the state of its BUILD (the
// `_metadata` attribute) is dropped with the BUILD. To know which bytes those
// are, the rewrite follows the pickle stack, recording where each entry's bytes
// start; an opcode it does not know leaves the pickle unchanged.
#include "api/pickle_rewrite.h"

#include <cstdint>
#include <map>
#include <vector>

namespace torchext::detail {
namespace {

enum class Tag : uint8_t { Other, Mark, OrderedDictClass, OrderedDict };

struct Entry {
  Tag tag;
  size_t start;  // offset in the output where this entry's bytes begin
};

}  // namespace

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
      case 'c': {                   // GLOBAL module\nname\n
        const size_t a = in.find('\n', pos + 1);
        const size_t b = a == std::string::npos ? a : in.find('\n', a + 1);
        if (b == std::string::npos) return c10::nullopt;
        const bool od = in.compare(pos + 1, b - pos - 1, "collections\nOrderedDict") == 0;
        push(od ? Tag::OrderedDictClass : Tag::Other);
        arg = b - pos;
        break;
      }
      case 'q':
      case 'r':  // BINPUT, LONG_BINPUT: the bytes stay with the top entry
        arg = op == 'q' ? 1 : 4;
        if (!need(arg) || stack.empty()) return c10::nullopt;
        memo[op == 'q' ? static_cast<uint8_t>(in[pos + 1]) : u32(pos + 1)] = stack.back().tag;
        break;
      case 'h':
      case 'j':  // BINGET, LONG_BINGET
        arg = op == 'h' ? 1 : 4;
        if (!need(arg)) return c10::nullopt;
        push(memo[op == 'h' ? static_cast<uint8_t>(in[pos + 1]) : u32(pos + 1)]);
        break;
      case '}':
      case ']':
      case ')':
      case 'N':
      case '\x88':
      case '\x89': push(Tag::Other); break;  // empty dict/list/tuple, None, True, False
      case 'J':
        push(Tag::Other);
        arg = 4;
        break;  // BININT
      case 'K':
        push(Tag::Other);
        arg = 1;
        break;  // BININT1
      case 'M':
        push(Tag::Other);
        arg = 2;
        break;  // BININT2
      case 'G':
        push(Tag::Other);
        arg = 8;
        break;  // BINFLOAT
      case '\x8a':
      case 'U':
      case 'C':  // LONG1, SHORT_BINSTRING, SHORT_BINBYTES
        if (!need(1)) return c10::nullopt;
        push(Tag::Other);
        arg = 1 + static_cast<uint8_t>(in[pos + 1]);
        break;
      case 'X':
      case 'B':
      case 'T':  // BINUNICODE, BINBYTES, BINSTRING
        if (!need(4)) return c10::nullopt;
        push(Tag::Other);
        arg = 4 + u32(pos + 1);
        break;
      case '(': push(Tag::Mark); break;
      case 't':
      case 'l':
      case 'd':  // TUPLE, LIST, DICT
        if (!fold(mark_depth(), Tag::Other)) return c10::nullopt;
        break;
      case '\x85':
        if (!fold(1, Tag::Other)) return c10::nullopt;
        break;  // TUPLE1
      case '\x86':
        if (!fold(2, Tag::Other)) return c10::nullopt;
        break;  // TUPLE2
      case '\x87':
        if (!fold(3, Tag::Other)) return c10::nullopt;
        break;  // TUPLE3
      case 'Q':
        if (!fold(1, Tag::Other)) return c10::nullopt;
        break;  // BINPERSID
      case 'a':
      case 's':
      case 'e':
      case 'u': {  // APPEND, SETITEM, APPENDS, SETITEMS
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
      default: return c10::nullopt;
    }
    if (!need(arg)) return c10::nullopt;
    out.append(in, pos, 1 + arg);
    pos += 1 + arg;
  }
  return c10::nullopt;
}

}  // namespace torchext::detail
