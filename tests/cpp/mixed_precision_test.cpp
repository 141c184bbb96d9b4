// Tests of torchext::Trainer's precision option ("bf16-mixed", "16-mixed")
// against a hand-written LibTorch loop under C++ autocast (at::autocast), with
// GradScaler's algorithm written out through its own ATen ops for float16: the
// losses, the float32 master weights and momentum buffers, skipped steps, the
// scaler's state in checkpoints, and the errors. Registered with test_runner.h.
#include <torchext/torchext.h>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "test_runner.h"

using torchext_test::kSeedSizes;

namespace {

// The stock loop on its own copies of the parameters: the forward (at::linear,
// the activation) and the loss under autocast, the backward, then either the
// SGD step or GradScaler's scale / unscale-and-check / step-unless-inf / update.
class AutocastLoop {
 public:
  AutocastLoop(const torchext::nn::MLP& model, at::ScalarType dtype, const std::string& activation)
      : dtype_(dtype), activation_(activation) {
    for (const auto& p : model->parameters())
      params_.push_back(p.detach().clone().requires_grad_());
    optimizer_ = std::make_unique<torch::optim::SGD>(
        params_, torch::optim::SGDOptions(kLr).momentum(kMomentum));
    if (dtype == at::kHalf) {
      scale_ = torch::full({}, 65536.0, torch::kFloat);
      growth_tracker_ = torch::zeros({}, torch::kInt);
    }
  }

  double step(const torch::Tensor& x, const torch::Tensor& y) {
    optimizer_->zero_grad();
    torch::Tensor loss;
    {
      at::autocast::set_autocast_enabled(at::kCPU, true);
      at::autocast::set_autocast_dtype(at::kCPU, dtype_);
      torch::Tensor a = x;
      for (size_t i = 0; i < params_.size(); i += 2) {
        a = torch::linear(a, params_[i], params_[i + 1]);
        if (i + 2 < params_.size()) a = activation_ == "relu" ? torch::relu(a) : torch::tanh(a);
      }
      loss = torch::mse_loss(a, y);
      at::autocast::set_autocast_enabled(at::kCPU, false);
      at::autocast::clear_cache();
    }
    if (!scale_.defined()) {
      loss.backward();
      optimizer_->step();
      return loss.item<double>();
    }
    (loss * scale_).backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : params_) grads.push_back(p.mutable_grad());
    auto found_inf = torch::zeros({1}, torch::kFloat);
    const auto inv_scale = scale_.to(torch::kDouble).reciprocal().to(torch::kFloat);
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
    if (found_inf.item<float>() == 0.0f) optimizer_->step();
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf, 2.0, 0.5, 2000);
    return loss.item<double>();
  }

  const std::vector<torch::Tensor>& params() const { return params_; }
  torch::Tensor momentum_buffer(size_t i) const {
    return static_cast<torch::optim::SGDParamState&>(
               *optimizer_->state().at(params_[i].unsafeGetTensorImpl()))
        .momentum_buffer();
  }
  double scale() const { return scale_.item<double>(); }

  static constexpr double kLr = 1e-2, kMomentum = 0.9;

 private:
  at::ScalarType dtype_;
  std::string activation_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::SGD> optimizer_;
  torch::Tensor scale_, growth_tracker_;
};

// Within bfloat16 tolerance: rtol 1.6e-2 and an atol of bfloat16's resolution
// near the tensor's largest entries.
bool close_bf16(const torch::Tensor& a, const torch::Tensor& b) {
  const double atol = std::ldexp(b.abs().max().item<double>(), -8);
  return a.scalar_type() == torch::kFloat && torchext_test::close(a, b, 1.6e-2, atol);
}

struct Mixed {
  torchext::nn::MLP model;
  std::shared_ptr<torchext::optim::SGD> optimizer;
  torchext::Trainer trainer;
};

Mixed make_mixed(uint64_t seed, const std::string& precision, const std::string& activation,
                 torchext::LossScaler scaler = {}) {
  torch::manual_seed(seed);
  torchext::nn::MLP model(torchext::nn::MLPOptions(kSeedSizes).activation(activation));
  auto optimizer = std::make_shared<torchext::optim::SGD>(
      model->parameters(),
      torchext::optim::SGDOptions(AutocastLoop::kLr).momentum(AutocastLoop::kMomentum));
  torchext::Trainer trainer(model, optimizer,
                            torchext::TrainerOptions().precision(precision).scaler(scaler));
  return {model, optimizer, std::move(trainer)};
}

}  // namespace

TEST_CASE(mixed_precision_trainer_matches_a_libtorch_autocast_loop) {
  for (const std::string precision : {"bf16-mixed", "16-mixed"}) {
    for (const std::string activation : {"relu", "tanh"}) {
      auto run = make_mixed(3, precision, activation);
      EXPECT(run.trainer.precision() == precision);
      AutocastLoop stock(run.model, precision == "16-mixed" ? at::kHalf : at::kBFloat16,
                         activation);
      for (int step = 0; step < 40; ++step) {
        const auto x = torch::randn({32, 20}), y = torch::randn({32, 40});
        const double got = run.trainer.step(x, y).item<double>();
        const double expected = stock.step(x, y);
        EXPECT(std::abs(got - expected) <= 2e-2 * std::abs(expected));
      }
      const auto params = run.model->parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT(close_bf16(params[i], stock.params()[i]));  // the float32 master weights
        EXPECT(close_bf16(run.optimizer->momentum_buffer(params[i]), stock.momentum_buffer(i)));
      }
      if (precision == "16-mixed") EXPECT(run.trainer.scaler().current_scale() == stock.scale());
    }
  }
}

TEST_CASE(mixed_precision_fp16_skips_overflowing_steps_and_checkpoints_the_scaler) {
  torchext::LossScaler huge;
  huge.init_scale = std::ldexp(1.0, 60);  // the float16 gradients overflow
  huge.growth_interval = 3;
  auto run = make_mixed(5, "16-mixed", "relu", huge);
  const auto x = torch::randn({16, 20}), y = torch::randn({16, 40});
  std::vector<torch::Tensor> before;
  for (const auto& p : run.model->parameters()) before.push_back(p.clone());
  run.trainer.step(x, y);
  const auto params = run.model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT(torch::equal(params[i], before[i]));                    // bit-identical
    EXPECT(!run.optimizer->momentum_buffer(params[i]).defined());  // no buffer created
  }
  EXPECT(run.trainer.scaler().current_scale() == std::ldexp(1.0, 59));
  EXPECT(run.trainer.steps() == 1);  // a skipped step counts, as a stock iteration does

  // Down to a scale the gradients fit, then a checkpoint round trip continues
  // exactly, scaler included (GradScaler.state_dict()'s layout).
  for (int s = 0; s < 45; ++s) run.trainer.step(x, y);
  const std::string path = "torchext_mixed_test_checkpoint.pt";
  run.trainer.save(path);
  const auto state = run.trainer.state_dict().toGenericDict();
  const auto scaler_state = state.at("scaler").toGenericDict();
  EXPECT(scaler_state.at("scale").toDouble() == run.trainer.scaler().current_scale());
  EXPECT(scaler_state.at("growth_interval").toInt() == 3);
  EXPECT(scaler_state.at("_growth_tracker").toInt() ==
         run.trainer.scaler().current_growth_tracker());
  auto restored = make_mixed(6, "16-mixed", "relu");
  restored.trainer.load(path);
  std::remove(path.c_str());
  EXPECT(restored.trainer.scaler().growth_interval == 3);
  for (int s = 0; s < 6; ++s) {
    const auto xs = torch::randn({16, 20}), ys = torch::randn({16, 40});
    EXPECT(run.trainer.step(xs, ys).item<double>() == restored.trainer.step(xs, ys).item<double>());
    EXPECT(run.trainer.scaler().current_scale() == restored.trainer.scaler().current_scale());
  }
  const auto a = run.model->parameters(), b = restored.model->parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT(torch::equal(a[i], b[i]));
}

TEST_CASE(mixed_precision_fit_evaluate_and_errors) {
  auto run = make_mixed(7, "bf16-mixed", "tanh");
  const auto x = torch::randn({96, 20}), y = torch::randn({96, 40});
  torchext::FitOptions options;
  options.epochs = 2;
  options.batch_size = 32;
  const auto losses = run.trainer.fit(x, y, options);
  EXPECT(losses.size() == 2 && losses[1] < losses[0]);
  EXPECT(run.trainer.steps() == 6);
  const double eval = run.trainer.evaluate(x, y);
  EXPECT(std::isfinite(eval) && eval < losses[0]);
  EXPECT(run.trainer.predict(x).scalar_type() == torch::kBFloat16);
  EXPECT(run.model->parameters()[0].scalar_type() == torch::kFloat);
  EXPECT_ERROR(run.trainer.scaler(), "only a 16-mixed trainer has a loss scaler");

  torchext::nn::MLP model(kSeedSizes);
  torchext::optim::SGD optimizer(model->parameters(), torchext::optim::SGDOptions(0.1));
  EXPECT_ERROR(torchext::Trainer(model, optimizer, torchext::TrainerOptions().precision("fp16")),
               "unknown precision 'fp16'; expected bf16-mixed or 16-mixed");
  model->to(torch::kDouble);
  EXPECT_ERROR(
      torchext::Trainer(model, optimizer, torchext::TrainerOptions().precision("bf16-mixed")),
      "bf16-mixed trains float32 parameters");
}
