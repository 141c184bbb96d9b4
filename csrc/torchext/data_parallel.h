// Data-parallel building blocks over a c10d process group (gloo, NCCL, or any
// c10d backend): what the training core and the Trainers use to train one model
// replica per process, as DistributedDataParallel does.
//
// Every function here is a collective: each rank of the group must call it, in
// the same order as the other collectives on that group. A collective that fails
// (a rank died, hung past the group's timeout, or called something else) raises
// c10::Error naming the caller, the collective, this rank and the backend; it
// never waits forever. Checks that compare ranks raise the same error on every
// rank, so no rank goes on alone.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace torchext {

using ProcessGroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;

namespace data_parallel {

// Issues a collective with `issue` and waits for it, turning a failure of either
// into an error that names `who`, the collective (`what`, e.g. "gradient
// all-reduce"), this rank and the backend.
void run_collective(const ProcessGroupPtr& group, const char* who, const std::string& what,
                    const std::function<c10::intrusive_ptr<c10d::Work>()>& issue);

// Every rank's `values` (all ranks must pass as many), gathered through a tensor
// on `device` (NCCL needs CUDA; gloo takes either).
std::vector<std::vector<int64_t>> all_gather_ints(const ProcessGroupPtr& group,
                                                  const std::vector<int64_t>& values,
                                                  at::Device device, const char* who,
                                                  const std::string& what);

// In-place sum over the ranks.
void all_reduce_sum_(const ProcessGroupPtr& group, at::Tensor& tensor, const char* who,
                     const std::string& what);

// Starts a collective call on every rank at once: each rank says whether its own
// checks passed and which settings it runs with (label and value, e.g.
// {"batch_size", 128}). If this rank's checks failed, returns after the exchange
// (the caller then raises its own error); otherwise raises, on every rank, if
// another rank's checks failed or a rank's settings differ from rank 0's (naming
// the rank, the setting and both values), and returns when all agree.
void agree(const ProcessGroupPtr& group, at::Device device, bool checks_passed,
           const std::vector<std::pair<std::string, int64_t>>& settings, const char* who);

// Makes every rank hold rank 0's values of `tensors`, as DistributedDataParallel
// does at construction: first compares each rank's description of them (count,
// then per tensor its name, dtype and shape, then each of `facts`, free-form
// lines such as "loss mse") with rank 0's and raises on every rank, naming the
// first rank and tensor (or fact) that differs; then broadcasts rank 0's values.
void replicate_from_rank0(const ProcessGroupPtr& group, const std::vector<at::Tensor>& tensors,
                          const std::vector<std::string>& names,
                          const std::vector<std::string>& facts, const char* who);

// The sample indices (int64, CPU) that torch.utils.data.DistributedSampler(
// dataset of `samples`, num_replicas=world_size, rank=rank, shuffle=shuffle,
// seed=seed, drop_last=False) yields after set_epoch(epoch): the epoch's order
// (torch.randperm with a generator seeded seed + epoch, or 0..samples-1),
// padded by repeating it to a multiple of world_size, then every
// world_size-th index from `rank`.
at::Tensor shard_indices(int64_t samples, int64_t rank, int64_t world_size, bool shuffle,
                         int64_t seed, int64_t epoch);

}  // namespace data_parallel
}  // namespace torchext
