// The gradient all-reduce of the data-parallel training core (see
// gradient_reducer.h).
#include "train/gradient_reducer.h"

#include <c10/util/Exception.h>

namespace torchext::train {

at::Tensor GradientReducer::all_reduce(Workspace& ws, const char* who) {
  ws.loss_slot().copy_(ws.loss);
  ws.stop_slot().zero_();
  // Before the sum, as DDP's reducer does (its bucket views are grad * (1 / world)),
  // so float32 results round as DDP's do.
  ws.grad_buffer.mul_(1.0 / static_cast<double>(world_size()));
  std::vector<at::Tensor> buffer{ws.grad_buffer};
  data_parallel::run_collective(group_, who, "gradient all-reduce",
                                [&] { return group_->allreduce(buffer); });
  const double stops = ws.stop_slot().item<double>();
  TORCH_CHECK(stops == 0, who, ": ", static_cast<int64_t>(stops), " other rank",
              stops == 1 ? "" : "s", " stopped with an error (see ", stops == 1 ? "its" : "their",
              " output), so rank ", rank(),
              " stops too, before this step's update: every rank keeps the same parameters");
  return ws.loss_slot();
}

void GradientReducer::send_stop(Workspace& ws, const char* who) noexcept {
  try {
    ws.grad_buffer.zero_();
    ws.stop_slot().fill_(1.0);
    std::vector<at::Tensor> buffer{ws.grad_buffer};
    data_parallel::run_collective(group_, who, "stop signal to the other ranks",
                                  [&] { return group_->allreduce(buffer); });
  } catch (...) {  // the others are gone or stopping anyway
  }
}

}  // namespace torchext::train
