// The whole public C++ API of torchext.
#pragma once

#include <torchext/activation_loss.h>
#include <torchext/nn.h>
#include <torchext/ops.h>
#include <torchext/optim.h>
#include <torchext/serialize.h>
#include <torchext/trainer.h>
#include <torchext/trainer_core.h>
#include <torchext/trainer_lock.h>
#include <torchext/version.h>
