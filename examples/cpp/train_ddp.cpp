// Trains the walk-through's network data-parallel on several processes, with
// torchext::Trainer over a c10d process group (gloo, on the CPU).
//
//   train_ddp <rank> <world size> <rendezvous> [checkpoint path]
//
// <rendezvous> is where the processes find each other: file:<path> (a
// c10d::FileStore: a file every process can reach, which must not exist yet) or
// tcp:<host>:<port> (a c10d::TCPStore served by rank 0). Start one process per
// rank, e.g. on one machine:
//
//   train_ddp 0 2 file:ddp-store & train_ddp 1 2 file:ddp-store
//
// Every process makes the same data (same seed) and its own initial weights;
// the Trainer replaces them with rank 0's, averages the gradients over the ranks
// at every step, and trains each rank on its DistributedSampler shard of every
// epoch. The losses it returns are means over all ranks, so every rank prints the
// same numbers; rank 0 writes the checkpoint (Python's torch.load reads it).
#include <torchext/torchext.h>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>

namespace {

constexpr std::chrono::seconds kTimeout(60);  // for the rendezvous and every collective

c10::intrusive_ptr<c10d::Store> make_store(const std::string& rendezvous, int rank, int size) {
  if (rendezvous.rfind("file:", 0) == 0) {
    return c10::make_intrusive<c10d::FileStore>(rendezvous.substr(5), size);
  }
  const size_t colon = rendezvous.rfind(':');
  if (rendezvous.rfind("tcp:", 0) != 0 || colon <= 4) {
    throw std::invalid_argument("the rendezvous must be file:<path> or tcp:<host>:<port>, got '" +
                                rendezvous + "'");
  }
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(std::stoi(rendezvous.substr(colon + 1)));
  options.isServer = rank == 0;
  options.numWorkers = size;
  options.timeout = kTimeout;
  return c10::make_intrusive<c10d::TCPStore>(rendezvous.substr(4, colon - 4), options);
}

// A process group whose CPU collectives run on gloo, over the loopback interface.
torchext::ProcessGroupPtr make_gloo_group(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                          int size) {
  auto options = c10d::ProcessGroupGloo::Options::create(kTimeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  return group;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::fprintf(stderr, "usage: %s <rank> <world size> <file:PATH | tcp:HOST:PORT> [checkpoint]\n",
                 argv[0]);
    return 2;
  }
  try {
    const int rank = std::stoi(argv[1]), size = std::stoi(argv[2]);
    const std::string checkpoint = argc > 4 ? argv[4] : "ddp_checkpoint.pt";
    torch::set_num_threads(1);  // one process per core
    auto group = make_gloo_group(make_store(argv[3], rank, size), rank, size);

    // The same data on every rank: 1024 samples of y = x·A + noise.
    // (One draw per statement: the order of the operands of + is unspecified in C++.)
    torch::manual_seed(0);
    const auto x = torch::randn({1024, 20});
    const auto teacher = torch::randn({20, 40}) / 4.5;
    const auto noise = torch::randn({1024, 40});
    const auto y = x.matmul(teacher) + 0.1 * noise;

    torch::manual_seed(100 + rank);  // each rank's own weights: the Trainer broadcasts rank 0's
    torchext::nn::MLP model(torchext::nn::MLPOptions({20, 30, 30, 40}).activation("relu"));
    auto optimizer = std::make_shared<torchext::optim::SGD>(
        model->parameters(), torchext::optim::SGDOptions(1e-2).momentum(0.9));
    torchext::Trainer trainer(model, optimizer,
                              torchext::TrainerOptions().loss("mse").process_group(group));

    torchext::FitOptions options;
    options.epochs = 1;
    options.batch_size = 64;  // per rank, as a DataLoader's batch_size beside DistributedSampler
    options.seed = 0;
    for (int epoch = 0; epoch < 4; ++epoch) {
      options.start_epoch = epoch;  // DistributedSampler::set_epoch
      const double loss = trainer.fit(x, y, options).front();
      std::printf("rank %d/%d  epoch %d  loss %.6f\n", rank, size, epoch, loss);
    }
    std::printf("rank %d/%d  evaluation loss %.6f after %lld steps\n", rank, size,
                trainer.evaluate(x, y), static_cast<long long>(trainer.steps()));
    trainer.save(checkpoint);  // rank 0 writes; the others wait for it
    if (rank == 0) std::printf("checkpoint written to %s\n", checkpoint.c_str());
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "train_ddp: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_ddp: %s\n", e.what());
    return 1;
  }
  return 0;
}
