// TrainerCore::fit and TrainerCore::evaluate: the loops over a dataset.
//
// fit keeps its bookkeeping exact at every point an exception can leave it: a
// step's update is applied and counted before anything that may throw (the
// interruption point, the progress callback) runs, and a non-finite loss stops
// training before its update. On the fused CPU path the loss is read before each
// update. The ATen path (CUDA, and the CPU reference) avoids a host
// synchronisation per step: each step's loss stays on the device, a sticky
// device flag skips every update after the first non-finite loss, and the
// losses are read once per epoch (or when an exception ends the epoch early) to
// settle the step count at the updates actually applied.
//
// Data-parallel (see trainer_core.h), each step's gradients and loss are
// all-reduced before the update, so every rank makes the same decisions (a
// non-finite mean loss stops all of them at the same step), and a rank that
// leaves early with an error first tells the others (GradientReducer::send_stop).
#include <torchext/trainer_core.h>

#include "train/core_impl.h"
#include "train/update.h"
#include "train/validation.h"

#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <limits>

namespace torchext {
namespace {

[[noreturn]] void stop_for_loss(const char* who, double value, int64_t epoch, int64_t step) {
  TORCH_CHECK(false, who, ": the loss became ", value, " at epoch ", epoch, ", step ", step,
              "; training stopped before that step's update (lower the learning rate or check "
              "the data)");
}

// The losses of one epoch on the ATen path, read back once.
struct DeviceLosses {
  at::Tensor losses;  // [steps_per_epoch], model dtype, on the device
  at::Tensor skip;    // 0-dim float32 on the device: non-zero once a loss was not finite

  // (index of the first non-finite loss or `issued`, sample-weighted sum of the
  // losses before it) over the first `issued` steps.
  std::pair<int64_t, double> read(int64_t issued, int64_t batch, int64_t samples) const {
    if (issued == 0) return {0, 0.0};
    const at::Tensor host = losses.narrow(0, 0, issued).to(at::kCPU, at::kDouble);
    const double* values = host.data_ptr<double>();
    double sum = 0;
    for (int64_t s = 0; s < issued; ++s) {
      if (!std::isfinite(values[s])) return {s, sum};
      sum += values[s] * static_cast<double>(std::min(batch, samples - s * batch));
    }
    return {issued, sum};
  }
};

}  // namespace

std::vector<double> TrainerCore::fit(const at::Tensor& x, const at::Tensor& y,
                                     OptimizerLink& optimizer, const FitOptions& options,
                                     const ProgressCallback& progress) {
  constexpr const char* who = "torchext.Trainer.fit";
  auto hold = impl_->lock.acquire(TrainerLock::Access::Run, who);
  Impl& impl = *impl_;
  const bool distributed = impl.reducer != nullptr;
  // DistributedSampler's shards (a world of one without a process group).
  const bool sampler = distributed || options.seed.has_value();
  const int64_t rank = distributed ? impl.reducer->rank() : 0;
  const int64_t world = distributed ? impl.reducer->world_size() : 1;
  const int64_t seed = options.seed.value_or(0);
  const int64_t dataset = x.defined() && x.dim() > 0 ? x.size(0) : 0;
  // The samples each rank trains on per epoch.
  const int64_t samples = sampler ? (dataset + world - 1) / world : dataset;
  std::vector<SGDGroup> groups;
  impl.start_call(
      who,
      [&] {
        TORCH_CHECK(options.batch_size >= 1, who, ": batch_size must be at least 1, got ",
                    options.batch_size);
        TORCH_CHECK(options.epochs >= 0, who, ": epochs must be non-negative, got ",
                    options.epochs);
        train::check_samples(x, y, who);
        TORCH_CHECK(dataset >= 1, who, ": the data is empty (0 samples)");
        impl.refresh(who);
        train::check_batch(impl.model, x, y, who, /*check_target_range=*/true);
        TORCH_CHECK(!options.generator.has_value() || options.generator->device().is_cpu(), who,
                    ": the shuffling generator must be a CPU torch.Generator");
        TORCH_CHECK(!(sampler && options.generator.has_value()), who,
                    distributed ? ": data-parallel, each epoch's order is DistributedSampler's; "
                                  "pass seed (and start_epoch), not a generator"
                                : ": pass either a generator or a seed, not both");
        TORCH_CHECK(
            seed >= 0 && options.start_epoch >= 0 &&
                options.start_epoch <= std::numeric_limits<int64_t>::max() - seed - options.epochs,
            who,
            ": seed and start_epoch must be non-negative (and their sum with the "
            "epochs must fit in 64 bits), got seed ",
            seed, ", start_epoch ", options.start_epoch);
        const int64_t steps = (samples + std::min(options.batch_size, samples) - 1) /
                              std::min(options.batch_size, samples);
        TORCH_CHECK(options.epochs <= (std::numeric_limits<int64_t>::max() - impl.steps) / steps,
                    who, ": ", options.epochs, " epochs of ", steps,
                    " steps overflow the step count");
        groups = impl.begin_training(optimizer, who);
      },
      {{"the number of samples", dataset},
       {"epochs", options.epochs},
       {"batch_size", options.batch_size},
       {"shuffle", options.shuffle},
       {"seed", seed},
       {"start_epoch", options.start_epoch},
       {"a generator (1: passed)", options.generator.has_value()},
       {"the trainer's step count", impl.steps}});
  const train::Model& model = impl.model;
  const int64_t batch = std::min(options.batch_size, samples);
  const int64_t steps_per_epoch = (samples + batch - 1) / batch;
  at::NoGradGuard no_grad;

  const bool deferred = impl.defers_loss_checks();
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  at::Tensor x_batch = at::empty({batch, x.size(1)}, xc.options());
  at::Tensor y_batch =
      y.dim() == 2 ? at::empty({batch, y.size(1)}, yc.options()) : at::empty({batch}, yc.options());
  impl.ensure_workspace(batch);  // and no other size during the call: `update` holds its grads
  train::Update update = impl.make_update(groups);

  std::vector<double> epoch_losses;
  using Clock = std::chrono::steady_clock;
  auto last_report = Clock::now();
  // Data-parallel: whether the other ranks would wait in a gradient all-reduce
  // for this rank if it left now (see GradientReducer::send_stop).
  bool others_wait = false;
  try {
    for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
      at::Tensor order;
      if (sampler && (options.shuffle || world > 1)) {
        order = data_parallel::shard_indices(dataset, rank, world, options.shuffle, seed,
                                             options.start_epoch + epoch)
                    .to(model.device);
      } else if (options.shuffle && !sampler) {
        order = at::randperm(samples, options.generator, at::TensorOptions().dtype(at::kLong))
                    .to(model.device);
      }
      DeviceLosses device;
      if (deferred) {
        device.losses = at::empty({steps_per_epoch}, xc.options());
        device.skip = at::zeros({}, xc.options().dtype(at::kFloat));
        if (impl.mixed) impl.mixed->begin_epoch(steps_per_epoch);
      }
      const int64_t epoch_start = impl.steps;
      int64_t issued = 0;  // steps run this epoch (on the ATen path: updates applied or skipped)
      double weighted_sum = 0;
      try {
        for (int64_t s = 0; s < steps_per_epoch; ++s) {
          const bool last_of_call = epoch + 1 == options.epochs && s + 1 == steps_per_epoch;
          others_wait = true;
          // Python code may have run since the last step (the progress callback, a
          // signal handler): the kernels read the parameters by raw pointer, so a
          // parameter resized in place must stop fit here.
          TORCH_CHECK(train::parameters_unchanged(model), who,
                      ": the model's parameters changed in place during fit (in a progress "
                      "callback?); fit stopped before step ",
                      s, " of epoch ", epoch, ", with every earlier update applied");
          const int64_t start = s * batch, rows = std::min(batch, samples - start);
          at::Tensor xb = x_batch.narrow(0, 0, rows), yb = y_batch.narrow(0, 0, rows);
          if (order.defined()) {
            const at::Tensor index = order.narrow(0, start, rows);
            at::index_select_out(xb, xc, 0, index);
            at::index_select_out(yb, yc, 0, index);
          } else {
            xb = xc.narrow(0, start, rows);
            yb = yc.narrow(0, start, rows);
          }
          impl.forward_backward(xb, yb, /*backward=*/true);
          others_wait = false;  // they either pass this all-reduce with this rank, or raise
          const at::Tensor loss = impl.reduce(who);
          others_wait = !last_of_call;  // a loss that stops training stops every rank alike
          if (!deferred) {
            const double value = loss.item<double>();
            if (!std::isfinite(value)) {
              others_wait = false;
              stop_for_loss(who, value, epoch, s);
            }
            impl.apply_update(update, optimizer, c10::nullopt);
            weighted_sum += value * static_cast<double>(rows);
          } else {
            device.losses[s].copy_(loss);
            device.skip.logical_or_(at::isfinite(loss).logical_not_());
            if (update.creates_buffers()) {
              // A created buffer must be written by its update: decide on the host.
              // This is the call's first update (every later one finds its buffers),
              // so no update was skipped before it.
              const double value = loss.item<double>();
              if (!std::isfinite(value)) {
                others_wait = false;
                stop_for_loss(who, value, epoch, s);
              }
              impl.apply_update(update, optimizer, c10::nullopt);
            } else {
              impl.apply_update(update, optimizer, device.skip);
            }
          }
          ++issued;
          ++impl.steps;
          if (options.interruption_point) options.interruption_point();
          if (progress && (Clock::now() - last_report > std::chrono::milliseconds(50))) {
            const double so_far = static_cast<double>(std::min(samples, (s + 1) * batch));
            progress(
                {epoch, s + 1, steps_per_epoch, deferred ? std::nan("") : weighted_sum / so_far});
            last_report = Clock::now();
          }
        }
      } catch (...) {
        if (deferred) {
          // Count only the updates that were applied before the first non-finite loss.
          try {
            const int64_t applied = device.read(issued, batch, samples).first;
            impl.steps = epoch_start + applied;
            if (impl.mixed) impl.mixed->restore_scaler_before(applied);
          } catch (...) {  // the device itself failed: the count stays as issued
          }
        }
        throw;
      }
      if (deferred) {
        const auto [applied, sum] = device.read(issued, batch, samples);
        impl.steps = epoch_start + applied;
        if (applied < issued) {
          if (impl.mixed) impl.mixed->restore_scaler_before(applied);
          others_wait = false;  // the losses are every rank's: all stop here
          const double value = device.losses[applied].item<double>();
          TORCH_CHECK(false, who, ": the loss became ", value, " at epoch ", epoch, ", step ",
                      applied,
                      "; training stopped (checked at the end of the epoch on this "
                      "device: the updates from that step on were skipped, so the model keeps "
                      "the weights from before it; lower the learning rate or check the data)");
        }
        weighted_sum = sum;
      }
      epoch_losses.push_back(weighted_sum / static_cast<double>(samples));
      if (progress) progress({epoch, steps_per_epoch, steps_per_epoch, epoch_losses.back()});
      last_report = Clock::now();
    }
  } catch (...) {
    if (others_wait) impl.stop_others(who);
    throw;
  }
  return epoch_losses;
}

double TrainerCore::evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size,
                             const std::function<void()>& interruption_point) {
  constexpr const char* who = "torchext.Trainer.evaluate";
  auto hold = impl_->lock.acquire(TrainerLock::Access::Run, who);
  Impl& impl = *impl_;
  const int64_t dataset = x.defined() && x.dim() > 0 ? x.size(0) : 0;
  impl.start_call(who,
                  [&] {
                    TORCH_CHECK(batch_size >= 0, who,
                                ": batch_size must be non-negative (0: one batch), got ",
                                batch_size);
                    train::check_samples(x, y, who);
                    TORCH_CHECK(dataset >= 1, who, ": the data is empty (0 samples)");
                    impl.refresh(who);
                    train::check_batch(impl.model, x, y, who, /*check_target_range=*/true);
                  },
                  {{"the number of samples", dataset},
                   {"batch_size", batch_size},
                   {"the trainer's step count", impl.steps}});
  at::NoGradGuard no_grad;
  // Data-parallel, rank r evaluates the r-th of world_size contiguous parts.
  const int64_t world = impl.reducer ? impl.reducer->world_size() : 1;
  const int64_t rank = impl.reducer ? impl.reducer->rank() : 0;
  const auto part_start = [&](int64_t r) {
    return dataset / world * r + std::min(r, dataset % world);
  };
  const int64_t begin = part_start(rank), end = part_start(rank + 1);
  const int64_t part = std::max<int64_t>(end - begin, 1);
  const int64_t batch = batch_size > 0 ? std::min(batch_size, part) : part;
  impl.ensure_workspace(batch);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  // The sample-weighted loss sum and, data-parallel, a stop flag (a rank
  // interrupted before the sum is all-reduced tells the others so).
  at::Tensor total = at::zeros({2}, xc.options().dtype(at::kDouble));
  try {
    for (int64_t start = begin; start < end; start += batch) {
      const int64_t rows = std::min(batch, end - start);
      impl.forward_backward(xc.narrow(0, start, rows), yc.narrow(0, start, rows),
                            /*backward=*/false);
      total[0].add_(impl.loss(), static_cast<double>(rows));
      if (interruption_point) interruption_point();
    }
  } catch (...) {
    if (impl.reducer) {
      try {
        at::Tensor stop = at::tensor({0.0, 1.0}, total.options());
        data_parallel::all_reduce_sum_(impl.reducer->group(), stop, who,
                                       "stop signal to the other ranks");
      } catch (...) {  // the others are gone or stopping anyway
      }
    }
    throw;
  }
  if (impl.reducer) {
    data_parallel::all_reduce_sum_(impl.reducer->group(), total, who,
                                   "all-reduce of the evaluation loss");
    TORCH_CHECK(total[1].item<double>() == 0, who,
                ": another rank stopped with an error (see its output), so this rank stops "
                "too");
  }
  return total[0].item<double>() / static_cast<double>(dataset);
}

}  // namespace torchext
