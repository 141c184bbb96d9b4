// Python OrderedDicts in torch.save files, made readable for TorchScript's unpickler.
//
// TorchScript's unpickler turns collections.OrderedDict() into None and knows no
// POP, so the OrderedDict of a Python `model.state_dict()` fails to load in C++.
// rewrite_ordered_dicts replaces each OrderedDict by a plain dict (same keys, same
// order) and drops its `_metadata` state.
#pragma once

#include <c10/util/Optional.h>

#include <string>

namespace torchext::detail {

// The rewritten data.pkl, or nullopt when it holds no OrderedDict (or uses an
// opcode the rewrite does not follow: the pickle is then left as it is).
c10::optional<std::string> rewrite_ordered_dicts(const std::string& pickle);

}  // namespace torchext::detail
