// The whole public C++ API of torchext.
#pragma once

#include <torchext/ops.h>
#include <torchext/version.h>
