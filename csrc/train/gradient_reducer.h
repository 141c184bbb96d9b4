// The data-parallel step of the training core: after each rank's local forward
// and backward, the mean over the ranks of every gradient (as
// DistributedDataParallel: each gradient scaled by 1/world_size, then summed by
// one all-reduce of the workspace's flat gradient buffer through c10d), before
// the fused update.
//
// The buffer also carries each rank's loss (so every rank learns the mean loss
// of the step, and a non-finite loss anywhere stops every rank at the same step)
// and a stop flag: a rank that leaves a call with an error while the others wait
// in this step's all-reduce sends them the flag, and they raise too, before their
// update, instead of waiting for the process group's timeout.
#pragma once

#include <torchext/data_parallel.h>

#include "train/model.h"

namespace torchext::train {

class GradientReducer {
 public:
  explicit GradientReducer(ProcessGroupPtr group) : group_(std::move(group)) {}

  const ProcessGroupPtr& group() const { return group_; }
  int rank() const { return group_->getRank(); }
  int world_size() const { return group_->getSize(); }

  // Averages Workspace::param_grads over the ranks, in place, and returns the
  // mean of the ranks' losses (a 0-dim view into the workspace). Raises, with
  // nothing else changed, if the all-reduce fails or another rank sent a stop.
  at::Tensor all_reduce(Workspace& ws, const char* who);

  // Sends the stop to the other ranks waiting in all_reduce (and waits for them
  // to take it). Never throws: the caller is already raising its own error.
  void send_stop(Workspace& ws, const char* who) noexcept;

 private:
  ProcessGroupPtr group_;
};

}  // namespace torchext::train
