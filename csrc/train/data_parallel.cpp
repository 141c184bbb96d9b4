// The data-parallel collectives of torchext/data_parallel.h: failures named,
// settings and model replicas compared across ranks, rank 0's values broadcast,
// and DistributedSampler's shard of an epoch.
#include <torchext/data_parallel.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <c10/util/StringUtil.h>

#include <map>
#include <sstream>

namespace torchext::data_parallel {
namespace {

using c10::str;

std::string first_line(const std::string& text) {
  const size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

std::string rank_of(const ProcessGroupPtr& group) {
  return str("rank ", group->getRank(), " of ", group->getSize(), ", ", group->getBackendName(),
             " backend");
}

// Every rank's bytes of `text`, as strings (two all-gathers: lengths, then bytes).
std::vector<std::string> all_gather_text(const ProcessGroupPtr& group, const std::string& text,
                                         at::Device device, const char* who,
                                         const std::string& what) {
  const auto lengths =
      all_gather_ints(group, {static_cast<int64_t>(text.size())}, device, who, what + " (lengths)");
  int64_t longest = 0;
  for (const auto& length : lengths) longest = std::max(longest, length[0]);
  at::Tensor mine = at::zeros({std::max<int64_t>(longest, 1)}, at::kByte);
  std::memcpy(mine.data_ptr(), text.data(), text.size());
  std::vector<at::Tensor> input{mine.to(device)};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < group->getSize(); ++r) output[0].push_back(at::empty_like(input[0]));
  run_collective(group, who, what, [&] { return group->allgather(output, input); });
  std::vector<std::string> texts;
  for (int r = 0; r < group->getSize(); ++r) {
    const at::Tensor bytes = output[0][r].cpu();
    texts.emplace_back(static_cast<const char*>(bytes.data_ptr()), lengths[r][0]);
  }
  return texts;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

void run_collective(const ProcessGroupPtr& group, const char* who, const std::string& what,
                    const std::function<c10::intrusive_ptr<c10d::Work>()>& issue) {
  std::string failure;
  try {
    issue()->wait();
    return;
  } catch (const c10::Error& e) {
    failure = first_line(e.what_without_backtrace());
  } catch (const std::exception& e) {
    failure = first_line(e.what());
  }
  TORCH_CHECK(false, who, ": the ", what, " failed on ", rank_of(group), ": ", failure,
              " (another rank died, hung past the process group's timeout, or called a "
              "different collective)");
}

std::vector<std::vector<int64_t>> all_gather_ints(const ProcessGroupPtr& group,
                                                  const std::vector<int64_t>& values,
                                                  at::Device device, const char* who,
                                                  const std::string& what) {
  const auto count = static_cast<int64_t>(values.size());
  at::Tensor mine = at::empty({std::max<int64_t>(count, 1)}, at::kLong);
  std::copy(values.begin(), values.end(), mine.data_ptr<int64_t>());
  std::vector<at::Tensor> input{mine.to(device)};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < group->getSize(); ++r) output[0].push_back(at::empty_like(input[0]));
  run_collective(group, who, what, [&] { return group->allgather(output, input); });
  std::vector<std::vector<int64_t>> all;
  for (const at::Tensor& t : output[0]) {
    const at::Tensor host = t.cpu();
    all.emplace_back(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + count);
  }
  return all;
}

void all_reduce_sum_(const ProcessGroupPtr& group, at::Tensor& tensor, const char* who,
                     const std::string& what) {
  std::vector<at::Tensor> tensors{tensor};
  run_collective(group, who, what, [&] { return group->allreduce(tensors); });
}

void agree(const ProcessGroupPtr& group, at::Device device, bool checks_passed,
           const std::vector<std::pair<std::string, int64_t>>& settings, const char* who) {
  std::vector<int64_t> values{checks_passed ? 0 : 1};
  for (const auto& setting : settings) values.push_back(setting.second);
  const auto all = all_gather_ints(group, values, device, who, "check of the call's arguments");
  if (!checks_passed) return;
  for (size_t r = 0; r < all.size(); ++r) {
    TORCH_CHECK(all[r][0] == 0, who, ": rank ", r,
                " refused the call (its error says why), so every rank stops here; nothing "
                "was changed");
  }
  for (size_t r = 1; r < all.size(); ++r) {
    for (size_t i = 0; i < settings.size(); ++i) {
      TORCH_CHECK(all[r][i + 1] == all[0][i + 1], who, ": rank ", r, " was called with ",
                  settings[i].first, " ", all[r][i + 1], " but rank 0 with ", all[0][i + 1],
                  "; every rank must make the same call (the same data size and settings); "
                  "nothing was changed");
    }
  }
}

void replicate_from_rank0(const ProcessGroupPtr& group, const std::vector<at::Tensor>& tensors,
                          const std::vector<std::string>& names,
                          const std::vector<std::string>& facts, const char* who) {
  TORCH_CHECK(names.size() == tensors.size(), who, ": ", tensors.size(), " tensors but ",
              names.size(), " names");
  const at::Device device = tensors.empty() ? at::Device(at::kCPU) : tensors[0].device();
  std::ostringstream description;
  description << tensors.size() << " tensors\n";
  for (size_t i = 0; i < tensors.size(); ++i) {
    description << "'" << names[i] << "' of shape " << tensors[i].sizes() << " and dtype "
                << c10::getDtypeNames(tensors[i].scalar_type()).first << "\n";
  }
  for (const std::string& fact : facts) description << fact << "\n";
  const auto texts =
      all_gather_text(group, description.str(), device, who, "comparison of the model replicas");
  const auto reference = lines_of(texts[0]);
  for (size_t r = 1; r < texts.size(); ++r) {
    const auto lines = lines_of(texts[r]);
    for (size_t i = 0; i < std::max(lines.size(), reference.size()); ++i) {
      const std::string theirs = i < lines.size() ? lines[i] : "nothing more";
      const std::string ours = i < reference.size() ? reference[i] : "nothing more";
      TORCH_CHECK(theirs == ours, who, ": the model differs between ranks: rank ", r, " has ",
                  theirs, ", where rank 0 has ", ours,
                  "; every rank must build the same model (the same layers, sizes and dtypes)");
    }
  }
  if (group->getSize() == 1) return;
  // One broadcast per (dtype, device) of all those tensors, flattened together.
  at::NoGradGuard no_grad;
  std::map<std::pair<int, std::string>, std::vector<at::Tensor>> by_kind;
  for (const at::Tensor& t : tensors) {
    by_kind[{static_cast<int>(t.scalar_type()), t.device().str()}].push_back(t);
  }
  for (auto& [kind, members] : by_kind) {
    std::vector<at::Tensor> flat_parts;
    for (const at::Tensor& t : members) flat_parts.push_back(t.reshape({-1}));
    std::vector<at::Tensor> flat{at::cat(flat_parts)};
    run_collective(group, who, "broadcast of rank 0's parameters and buffers",
                   [&] { return group->broadcast(flat); });
    if (group->getRank() == 0) continue;
    int64_t offset = 0;
    for (const at::Tensor& t : members) {
      t.copy_(flat[0].narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

at::Tensor shard_indices(int64_t samples, int64_t rank, int64_t world_size, bool shuffle,
                         int64_t seed, int64_t epoch) {
  TORCH_CHECK(samples >= 1 && world_size >= 1 && rank >= 0 && rank < world_size,
              "shard_indices: needs samples >= 1 and 0 <= rank < world_size, got samples ", samples,
              ", rank ", rank, ", world_size ", world_size);
  at::Tensor order;
  if (shuffle) {
    at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(seed + epoch));
    order = at::randperm(samples, generator, at::TensorOptions().dtype(at::kLong));
  } else {
    order = at::arange(samples, at::TensorOptions().dtype(at::kLong));
  }
  const int64_t per_rank = (samples + world_size - 1) / world_size;
  const int64_t total = per_rank * world_size;
  if (total > samples) order = order.repeat({(total + samples - 1) / samples}).narrow(0, 0, total);
  return order.slice(0, rank, total, world_size).contiguous();
}

}  // namespace torchext::data_parallel
