// Version and build facts of libtorchext.
#pragma once

#include <string>

namespace torchext {

// The torchext release (version.txt).
std::string version();
// The torch version this binary was compiled against.
std::string built_with_torch();
// Whether CUDA kernels were compiled in.
bool built_with_cuda();

}  // namespace torchext
