// torchext::Trainer under everything a careless or hostile caller does: two
// threads on one Trainer, parameters frozen, converted, reshaped or replaced
// after construction, exceptions and non-finite losses in fit, nested calls,
// bad states, and checkpoint files that are damaged or are not files at all.
// Every number is compared with a hand-written LibTorch loop in the same test.
#include <torchext/torchext.h>

#include <torch/torch.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "test_runner.h"

using torchext_test::close;

namespace {

const std::vector<int64_t> kSizes = {6, 9, 7, 5};

struct Setup {
  torchext::nn::MLP model{nullptr};
  std::shared_ptr<torchext::optim::SGD> optimizer;
  torchext::nn::MLP reference{nullptr};
  std::shared_ptr<torch::optim::SGD> reference_optimizer;
  std::unique_ptr<torchext::Trainer> trainer;
};

Setup setup(uint64_t seed = 0) {
  Setup s;
  torch::manual_seed(seed);
  s.model = torchext::nn::MLP(torchext::nn::MLPOptions(kSizes).activation("tanh"));
  s.model->to(torch::kDouble);
  torch::manual_seed(seed);
  s.reference = torchext::nn::MLP(torchext::nn::MLPOptions(kSizes).activation("tanh"));
  s.reference->to(torch::kDouble);
  s.optimizer = std::make_shared<torchext::optim::SGD>(
      s.model->parameters(), torchext::optim::SGDOptions(1e-2).momentum(0.9));
  s.reference_optimizer = std::make_shared<torch::optim::SGD>(
      s.reference->parameters(), torch::optim::SGDOptions(1e-2).momentum(0.9));
  s.trainer = std::make_unique<torchext::Trainer>(s.model, s.optimizer);
  return s;
}

std::pair<torch::Tensor, torch::Tensor> batch(int64_t rows, uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({rows, kSizes.front()}, torch::kDouble),
          torch::randn({rows, kSizes.back()}, torch::kDouble)};
}

void reference_step(Setup& s, const torch::Tensor& x, const torch::Tensor& y) {
  s.reference_optimizer->zero_grad();
  torch::mse_loss(s.reference->forward(x), y).backward();
  s.reference_optimizer->step();
}

bool same_as_reference(Setup& s, double rtol = 1e-10) {
  auto a = s.model->parameters();
  auto b = s.reference->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    if (!close(a[i], b[i], rtol, 1e-12)) return false;
    auto state = s.reference_optimizer->state().find(b[i].unsafeGetTensorImpl());
    const bool has = state != s.reference_optimizer->state().end();
    const auto mine = s.optimizer->momentum_buffer(a[i]);
    if (has != mine.defined()) return false;
    if (has &&
        !close(mine, static_cast<torch::optim::SGDParamState&>(*state->second).momentum_buffer(),
               rtol, 1e-12)) {
      return false;
    }
  }
  return true;
}

std::vector<torch::Tensor> copies(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.detach().clone());
  return out;
}

bool unchanged(const std::vector<torch::Tensor>& before, const std::vector<torch::Tensor>& now) {
  for (size_t i = 0; i < now.size(); ++i) {
    if (!torch::equal(before[i], now[i])) return false;
  }
  return true;
}

std::string temp_path(const std::string& name) {
  return "torchext_robustness_" + std::to_string(getpid()) + "_" + name;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

// ---------------------------------------------------------------------------
// Threads and nested calls

TEST_CASE(two_threads_on_one_trainer_equal_serial_steps) {
  auto s = setup();
  auto [x, y] = batch(32, 1);
  auto work = [&] {
    for (int i = 0; i < 40; ++i) s.trainer->step(x, y);
  };
  std::thread a(work), b(work);
  std::thread evaluations([&] {
    for (int i = 0; i < 20; ++i) {
      auto [ex, ey] = batch(300, 2);
      EXPECT(std::isfinite(s.trainer->evaluate(ex, ey, 64)));
    }
  });
  a.join();
  b.join();
  evaluations.join();
  EXPECT(s.trainer->steps() == 80);
  for (int i = 0; i < 80; ++i) reference_step(s, x, y);
  EXPECT(same_as_reference(s, 1e-9));
}

TEST_CASE(a_progress_callback_may_read_but_not_run_the_trainer) {
  auto s = setup();
  auto [x, y] = batch(64, 1);
  int64_t seen = -1;
  torchext::FitOptions options;
  options.batch_size = 16;
  s.trainer->fit(x, y, options, [&](const torchext::FitProgress&) {
    seen = s.trainer->state_dict().toGenericDict().at("step").toInt();
    EXPECT_ERROR(s.trainer->evaluate(x, y), "calls on one trainer cannot nest");
  });
  EXPECT(seen == 4 && s.trainer->steps() == 4);
}

// ---------------------------------------------------------------------------
// Exceptions in fit

TEST_CASE(an_exception_from_the_interruption_point_keeps_the_state_consistent) {
  auto s = setup();
  auto [x, y] = batch(64, 1);
  torchext::FitOptions options;
  options.batch_size = 16;
  options.shuffle = false;
  options.epochs = 10;
  int calls = 0;
  options.interruption_point = [&] {
    if (++calls == 7) throw std::runtime_error("interrupted");
  };
  bool raised = false;
  try {
    s.trainer->fit(x, y, options);
  } catch (const std::runtime_error&) {
    raised = true;
  }
  EXPECT(raised && s.trainer->steps() == 7);
  for (int i = 0; i < 7; ++i) {
    reference_step(s, x.narrow(0, (i % 4) * 16, 16), y.narrow(0, (i % 4) * 16, 16));
  }
  EXPECT(same_as_reference(s));
}

TEST_CASE(a_non_finite_loss_stops_fit_before_its_update) {
  auto s = setup();
  auto [x, y] = batch(64, 1);
  y[35][2] = std::numeric_limits<double>::infinity();  // step 2 of 16 rows, unshuffled
  torchext::FitOptions options;
  options.batch_size = 16;
  options.shuffle = false;
  EXPECT_ERROR(s.trainer->fit(x, y, options), "the loss became inf at epoch 0, step 2");
  EXPECT(s.trainer->steps() == 2);
  for (int i = 0; i < 2; ++i) reference_step(s, x.narrow(0, i * 16, 16), y.narrow(0, i * 16, 16));
  EXPECT(same_as_reference(s));
}

// ---------------------------------------------------------------------------
// Parameters changed after construction

TEST_CASE(a_frozen_parameter_is_not_updated_and_its_buffer_not_touched) {
  auto s = setup();
  auto [x, y] = batch(16, 1);
  s.trainer->step(x, y);
  reference_step(s, x, y);
  auto frozen = s.model->layers()[1]->weight;
  frozen.requires_grad_(false);
  s.reference->layers()[1]->weight.requires_grad_(false);
  const auto buffer = s.optimizer->momentum_buffer(frozen).clone();
  for (int i = 0; i < 3; ++i) {
    auto [bx, by] = batch(16, 10 + i);
    s.trainer->step(bx, by);
    reference_step(s, bx, by);
  }
  EXPECT(same_as_reference(s));
  EXPECT(torch::equal(s.optimizer->momentum_buffer(frozen), buffer));
}

TEST_CASE(a_model_converted_in_place_is_picked_up) {
  torch::manual_seed(3);
  torchext::nn::MLP model(kSizes);
  torch::manual_seed(3);
  torchext::nn::MLP reference(kSizes);
  torchext::optim::SGD optimizer(model->parameters(), torchext::optim::SGDOptions(0.05));
  torch::optim::SGD reference_optimizer(reference->parameters(), torch::optim::SGDOptions(0.05));
  torchext::Trainer trainer(model, optimizer);
  model->to(torch::kDouble);  // the same tensors, now float64
  reference->to(torch::kDouble);
  for (int i = 0; i < 3; ++i) {
    auto [x, y] = batch(16, i);
    const double got = trainer.step(x, y).item<double>();
    reference_optimizer.zero_grad();
    auto loss = torch::mse_loss(reference->forward(x), y);
    loss.backward();
    reference_optimizer.step();
    EXPECT(std::abs(got - loss.item<double>()) <= 1e-10 * std::abs(loss.item<double>()));
  }
  EXPECT(trainer.backend() == "cpu" && model->parameters()[0].dtype() == torch::kDouble);
}

TEST_CASE(a_reshaped_or_replaced_parameter_is_refused_with_nothing_changed) {
  auto s = setup();
  auto [x, y] = batch(16, 1);
  s.trainer->step(x, y);
  auto before = copies(s.model->parameters());
  s.model->layers()[0]->weight.set_data(torch::randn({3000, kSizes[0]}, torch::kDouble));
  EXPECT_ERROR(s.trainer->step(x, y), "changed since the trainer was built");
  EXPECT_ERROR(s.trainer->evaluate(x, y), "changed since the trainer was built");
  s.model->layers()[0]->weight.set_data(before[0].clone());
  EXPECT(unchanged(before, s.model->parameters()));
  EXPECT(s.trainer->steps() == 1);

  auto t = setup();
  torchext::nn::Linear last = t.model->layers()[2];  // a holder: shares the layer
  last->weight = torch::randn({kSizes[3], kSizes[2]}, torch::kDouble);
  EXPECT_ERROR(t.trainer->step(x, y), "were replaced since the Trainer was built");
}

TEST_CASE(a_nan_input_propagates_as_in_the_reference_loop) {
  auto s = setup();
  auto [x, y] = batch(16, 1);
  x[3][1] = std::nan("");
  const double got = s.trainer->step(x, y).item<double>();
  reference_step(s, x, y);
  EXPECT(std::isnan(got));
  for (const auto& p : s.model->parameters()) EXPECT(torch::isnan(p).any().item<bool>());
}

// ---------------------------------------------------------------------------
// States and files

TEST_CASE(load_state_dict_checks_everything_before_changing_anything) {
  auto source = setup(1);
  auto [x, y] = batch(16, 1);
  source.trainer->step(x, y);
  auto s = setup(2);
  const auto before = copies(s.model->parameters());
  auto bad_step = source.trainer->state_dict().toGenericDict().copy();
  bad_step.insert_or_assign("step", std::string("abc"));
  EXPECT_ERROR(s.trainer->load_state_dict(bad_step), "'step' must be a non-negative integer");
  auto negative = source.trainer->state_dict().toGenericDict().copy();
  negative.insert_or_assign("step", int64_t{-1});
  EXPECT_ERROR(s.trainer->load_state_dict(negative), "'step' must be a non-negative integer");
  auto meta = source.trainer->state_dict().toGenericDict().copy();
  auto model_state = meta.at("model").toGenericDict().copy();
  model_state.insert_or_assign(
      "2.weight", torch::zeros({kSizes[2], kSizes[1]}, torch::TensorOptions().device("meta")));
  meta.insert_or_assign("model", model_state);
  EXPECT_ERROR(s.trainer->load_state_dict(meta), "must be a dense tensor with data");
  EXPECT(unchanged(before, s.model->parameters()) && s.trainer->steps() == 0);
  EXPECT(!s.optimizer->momentum_buffer(s.model->parameters()[0]).defined());
}

TEST_CASE(checkpoint_files_that_are_damaged_or_not_checkpoints) {
  auto s = setup();
  auto [x, y] = batch(16, 1);
  s.trainer->step(x, y);
  const std::string good = temp_path("good.pt");
  s.trainer->save(good);
  const std::string bytes = read_bytes(good);
  auto other = setup(5);
  const auto before = copies(other.model->parameters());

  const std::string empty = temp_path("empty.pt"), text = temp_path("text.pt"),
                    truncated = temp_path("truncated.pt"), flipped = temp_path("flipped.pt");
  write_bytes(empty, "");
  write_bytes(text, "step,loss\n1,0.5\n");
  write_bytes(truncated, bytes.substr(0, bytes.size() / 2));
  std::string damaged = bytes;
  const size_t record = damaged.find("data/0");  // the first tensor record's local header
  damaged[record + 200] ^= 0x40;                 // a byte of its data
  write_bytes(flipped, damaged);
  EXPECT_ERROR(other.trainer->load(empty), "is empty (0 bytes)");
  EXPECT_ERROR(other.trainer->load(text), "is not a torch.save file");
  EXPECT_ERROR(other.trainer->load(truncated), "is truncated or damaged");
  EXPECT_ERROR(other.trainer->load(flipped), "is damaged: its contents do not match its checksum");
  EXPECT_ERROR(other.trainer->load(temp_path("missing.pt")), "no such file");
  EXPECT(unchanged(before, other.model->parameters()));
  other.trainer->load(good);
  EXPECT(other.trainer->steps() == 1);
  for (const auto& path : {good, empty, text, truncated, flipped}) std::remove(path.c_str());
}

TEST_CASE(save_writes_through_links_refuses_non_files_and_keeps_torch_save_modes) {
  auto s = setup();
  const std::string target = temp_path("target.pt"), link = temp_path("link.pt");
  write_bytes(target, "old");
  EXPECT(symlink(target.c_str(), link.c_str()) == 0);
  const mode_t old_mask = umask(022);
  s.trainer->save(link);
  struct stat st {};
  EXPECT(lstat(link.c_str(), &st) == 0 && S_ISLNK(st.st_mode));
  EXPECT(stat(target.c_str(), &st) == 0 && (st.st_mode & 0777) == 0644);
  const std::string fresh = temp_path("fresh.pt");
  s.trainer->save(fresh);
  EXPECT(stat(fresh.c_str(), &st) == 0 && (st.st_mode & 0777) == 0644);
  umask(old_mask);
  auto other = setup(4);
  other.trainer->load(link);
  EXPECT_ERROR(s.trainer->save("/dev/null"), "is a character device");
  EXPECT_ERROR(s.trainer->save("."), "is a directory");
  EXPECT_ERROR(s.trainer->save("no/such/folder/x.pt"), "does not exist");
  struct stat null {};
  EXPECT(stat("/dev/null", &null) == 0 && S_ISCHR(null.st_mode));
  for (const auto& path : {target, link, fresh}) std::remove(path.c_str());
}
