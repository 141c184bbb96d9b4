// Tests of the torchext C++ API against LibTorch's own modules, optimizer and a
// hand-written training loop (the reference for every number), plus error
// messages and C++ checkpoints. The Trainer's robustness (threads, changed and
// frozen parameters, exceptions, checkpoint files) is in trainer_robustness_test.cpp;
// both register their cases with test_runner.h, whose main runs them all.
#include <torchext/torchext.h>

#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#define TORCHEXT_TEST_MAIN
#include "test_runner.h"

using torchext_test::close;
using torchext_test::kSeedSizes;

namespace {

std::vector<std::string> keys(const torch::nn::Module& module) {
  std::vector<std::string> out;
  for (const auto& item : module.named_parameters()) {
    out.push_back(item.key());
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// nn::Linear and nn::MLP

TEST_CASE(linear_same_seed_same_parameters_as_torch) {
  for (bool bias : {true, false}) {
    torch::manual_seed(7);
    torchext::nn::Linear ours(torchext::nn::LinearOptions(20, 30).bias(bias));
    torch::manual_seed(7);
    torch::nn::Linear theirs(torch::nn::LinearOptions(20, 30).bias(bias));
    EXPECT(torch::equal(ours->weight, theirs->weight));
    EXPECT(ours->bias.defined() == bias);
    if (bias) {
      EXPECT(torch::equal(ours->bias, theirs->bias));
    }
    EXPECT(keys(*ours) == keys(*theirs));
  }
  torchext::nn::Linear lin(20, 30);
  EXPECT(lin->options.in_features() == 20 && lin->options.out_features() == 30);
}

TEST_CASE(linear_forward_backward_match_torch) {
  torch::manual_seed(0);
  torchext::nn::Linear ours(20, 30);
  torch::nn::Linear theirs(20, 30);
  {
    torch::NoGradGuard no_grad;
    theirs->weight.copy_(ours->weight);
    theirs->bias.copy_(ours->bias);
  }
  for (auto shape : std::vector<std::vector<int64_t>>{{128, 20}, {4, 5, 20}, {20}, {0, 20}}) {
    auto x = torch::randn(shape);
    auto a = ours->forward(x);
    auto b = theirs->forward(x);
    EXPECT(close(a, b, 1e-5, 1e-6));
    if (x.numel() == 0) {
      continue;
    }
    ours->zero_grad();
    theirs->zero_grad();
    (a * a).sum().backward();
    (b * b).sum().backward();
    EXPECT(close(ours->weight.grad(), theirs->weight.grad(), 1e-4, 1e-4));
    EXPECT(close(ours->bias.grad(), theirs->bias.grad(), 1e-4, 1e-4));
  }
}

TEST_CASE(mlp_names_and_init_match_python_sequential) {
  torch::manual_seed(3);
  torchext::nn::MLP ours(torchext::nn::MLPOptions(kSeedSizes).activation("relu"));
  torch::manual_seed(3);
  // One statement per layer: the order of function arguments' evaluation is unspecified.
  torch::nn::Linear l0(20, 30);
  torch::nn::Linear l2(30, 30);
  torch::nn::Linear l4(30, 40);
  torch::nn::Sequential theirs(l0, torch::nn::ReLU(), l2, torch::nn::ReLU(), l4);
  EXPECT((keys(*ours) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias",
                                                  "4.weight", "4.bias"}));
  EXPECT(keys(*ours) == keys(*theirs));
  auto a = ours->named_parameters();
  auto b = theirs->named_parameters();
  for (const auto& item : a) {
    EXPECT(torch::equal(item.value(), b[item.key()]));
  }
  auto x = torch::randn({128, 20});
  EXPECT(close(ours->forward(x), theirs->forward(x), 1e-5, 1e-6));

  torchext::nn::MLP linear_only(torchext::nn::MLPOptions({4, 3, 2}).activation("identity"));
  EXPECT(
      (keys(*linear_only) == std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias"}));
}

// ---------------------------------------------------------------------------
// optim::SGD

TEST_CASE(sgd_matches_torch_sgd_for_every_option) {
  struct Config {
    double momentum, dampening, weight_decay;
    bool nesterov, maximize;
  };
  const std::vector<Config> configs = {{0, 0, 0, false, false},        {0.9, 0, 0, false, false},
                                       {0.9, 0.1, 1e-2, false, false}, {0.9, 0, 1e-2, true, false},
                                       {0.5, 0.2, 1e-3, false, true},  {0, 0, 1e-2, false, true}};
  for (const auto& c : configs) {
    torch::manual_seed(1);
    std::vector<torch::Tensor> ours_p = {torch::randn({30, 20}, torch::kDouble).requires_grad_(),
                                         torch::randn({30}, torch::kDouble).requires_grad_()};
    std::vector<torch::Tensor> theirs_p;
    for (const auto& p : ours_p) {
      theirs_p.push_back(p.detach().clone().requires_grad_());
    }
    torchext::optim::SGD ours(ours_p, torchext::optim::SGDOptions(0.05)
                                          .momentum(c.momentum)
                                          .dampening(c.dampening)
                                          .weight_decay(c.weight_decay)
                                          .nesterov(c.nesterov)
                                          .maximize(c.maximize));
    // torch::optim::SGD has no maximize: it is SGD on the negated gradient.
    torch::optim::SGD theirs(theirs_p, torch::optim::SGDOptions(0.05)
                                           .momentum(c.momentum)
                                           .dampening(c.dampening)
                                           .weight_decay(c.weight_decay)
                                           .nesterov(c.nesterov));
    for (int step = 0; step < 20; ++step) {
      for (size_t i = 0; i < ours_p.size(); ++i) {
        auto g = torch::sin(ours_p[i].detach()) + 0.1 * torch::randn_like(ours_p[i]);
        ours_p[i].mutable_grad() = g.clone();
        theirs_p[i].mutable_grad() = c.maximize ? -g : g.clone();
      }
      ours.step();
      theirs.step();
    }
    for (size_t i = 0; i < ours_p.size(); ++i) {
      EXPECT(close(ours_p[i], theirs_p[i], 1e-12, 1e-12));
      if (c.momentum != 0) {
        auto buf = ours.momentum_buffer(ours_p[i]);
        auto ref = static_cast<torch::optim::SGDParamState&>(
                       *theirs.state().at(theirs_p[i].unsafeGetTensorImpl()))
                       .momentum_buffer();
        // maximize negates the gradient before it enters the buffer: the same buffer.
        EXPECT(close(buf, ref, 1e-12, 1e-12));
      }
    }
  }
}

TEST_CASE(sgd_param_groups_skip_missing_grads_and_closure) {
  auto a = torch::ones({3}, torch::kDouble).requires_grad_();
  auto b = torch::ones({2}, torch::kDouble).requires_grad_();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(std::vector<torch::Tensor>{b}, std::make_unique<torchext::optim::SGDOptions>(
                                                         torchext::optim::SGDOptions(0.5)));
  torchext::optim::SGD opt(groups, torchext::optim::SGDOptions(0.1));
  auto loss = opt.step([&] {
    opt.zero_grad();
    auto l = (a * a).sum();
    l.backward();
    return l;
  });
  EXPECT(loss.item<double>() == 3.0);
  EXPECT(torch::allclose(a, torch::full({3}, 0.8, torch::kDouble)));  // 1 - 0.1 * 2
  EXPECT(torch::equal(b, torch::ones({2}, torch::kDouble)));          // no gradient: untouched
}

TEST_CASE(step_lr_scheduler_drives_lr) {
  // The same schedule as on torch::optim::SGD (LibTorch's StepLR counts its own steps).
  auto p = torch::zeros({2}, torch::kDouble).requires_grad_();
  auto q = torch::zeros({2}, torch::kDouble).requires_grad_();
  torchext::optim::SGD ours({p}, torchext::optim::SGDOptions(0.1));
  torch::optim::SGD theirs({q}, torch::optim::SGDOptions(0.1));
  torch::optim::StepLR our_scheduler(ours, /*step_size=*/2, /*gamma=*/0.5);
  torch::optim::StepLR their_scheduler(theirs, /*step_size=*/2, /*gamma=*/0.5);
  std::vector<double> our_lrs, their_lrs;
  for (int epoch = 0; epoch < 6; ++epoch) {
    p.mutable_grad() = torch::ones({2}, torch::kDouble);
    q.mutable_grad() = torch::ones({2}, torch::kDouble);
    ours.step();
    theirs.step();
    our_lrs.push_back(ours.param_groups()[0].options().get_lr());
    their_lrs.push_back(theirs.param_groups()[0].options().get_lr());
    our_scheduler.step();
    their_scheduler.step();
  }
  EXPECT(our_lrs == their_lrs);
  EXPECT(our_lrs.front() == 0.1 && our_lrs.back() < 0.1);
  EXPECT(close(p, q));
}

TEST_CASE(sgd_serializes_like_libtorch_optimizers) {
  auto p = torch::randn({4}).requires_grad_();
  torchext::optim::SGD opt({p}, torchext::optim::SGDOptions(0.1).momentum(0.9).maximize(true));
  p.mutable_grad() = torch::ones({4});
  opt.step();
  std::stringstream stream;
  torch::save(opt, stream);
  auto q = p.detach().clone().requires_grad_();
  torchext::optim::SGD restored({q}, torchext::optim::SGDOptions(1.0));
  torch::load(restored, stream);
  const auto& options =
      static_cast<torchext::optim::SGDOptions&>(restored.param_groups()[0].options());
  EXPECT(options.lr() == 0.1 && options.momentum() == 0.9 && options.maximize());
  EXPECT(torch::equal(restored.momentum_buffer(q), opt.momentum_buffer(p)));
}

// ---------------------------------------------------------------------------
// Trainer

TEST_CASE(trainer_matches_hand_written_libtorch_loop) {
  for (const std::string loss_name : {"mse", "cross_entropy"}) {
    torch::manual_seed(5);
    torchext::nn::MLP model(torchext::nn::MLPOptions(kSeedSizes).activation("tanh"));
    model->to(torch::kDouble);
    torch::manual_seed(5);
    torchext::nn::MLP reference(torchext::nn::MLPOptions(kSeedSizes).activation("tanh"));
    reference->to(torch::kDouble);
    auto options = torchext::optim::SGDOptions(1e-2).momentum(0.9).weight_decay(1e-4);
    auto optimizer = std::make_shared<torchext::optim::SGD>(model->parameters(), options);
    torch::optim::SGD reference_opt(
        reference->parameters(), torch::optim::SGDOptions(1e-2).momentum(0.9).weight_decay(1e-4));
    torchext::Trainer trainer(model, optimizer, loss_name);
    auto x = torch::randn({10, 128, 20}, torch::kDouble);
    auto y = loss_name == "mse" ? torch::randn({10, 128, 40}, torch::kDouble)
                                : torch::randint(40, {10, 128}, torch::kLong);
    for (int step = 0; step < 10; ++step) {
      auto got = trainer.step(x[step], y[step]).item<double>();
      reference_opt.zero_grad();
      auto out = reference->forward(x[step]);
      auto loss = loss_name == "mse" ? torch::mse_loss(out, y[step])
                                     : torch::cross_entropy_loss(out, y[step]);
      loss.backward();
      reference_opt.step();
      EXPECT(std::abs(got - loss.item<double>()) <= 1e-10 * std::abs(loss.item<double>()));
    }
    EXPECT(trainer.steps() == 10);
    auto a = model->parameters();
    auto b = reference->parameters();
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT(close(a[i], b[i], 1e-10, 1e-12));
      // The buffers the core created live in the optimizer's state.
      auto ref = static_cast<torch::optim::SGDParamState&>(
                     *reference_opt.state().at(b[i].unsafeGetTensorImpl()))
                     .momentum_buffer();
      EXPECT(close(optimizer->momentum_buffer(a[i]), ref, 1e-10, 1e-12));
    }
  }
}

TEST_CASE(trainer_hands_over_to_a_hand_written_loop) {
  torch::manual_seed(11);
  torchext::nn::MLP model(kSeedSizes);
  torch::manual_seed(11);
  torchext::nn::MLP reference(kSeedSizes);
  torchext::optim::SGD optimizer(model->parameters(),
                                 torchext::optim::SGDOptions(1e-2).momentum(0.9));
  torchext::optim::SGD reference_opt(reference->parameters(),
                                     torchext::optim::SGDOptions(1e-2).momentum(0.9));
  torchext::Trainer trainer(model, optimizer);
  torch::optim::StepLR scheduler(optimizer, 3, 0.5);
  torch::optim::StepLR reference_scheduler(reference_opt, 3, 0.5);
  auto x = torch::randn({8, 64, 20});
  auto y = torch::randn({8, 64, 40});
  for (int step = 0; step < 8; ++step) {
    reference_opt.zero_grad();
    auto loss = torch::mse_loss(reference->forward(x[step]), y[step]);
    loss.backward();
    reference_opt.step();
    reference_scheduler.step();
    if (step < 4) {
      trainer.step(x[step], y[step]);
    } else {  // the stock loop takes over with the optimizer the Trainer used
      optimizer.zero_grad();
      torch::mse_loss(model->forward(x[step]), y[step]).backward();
      optimizer.step();
    }
    scheduler.step();
  }
  auto a = model->parameters();
  auto b = reference->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT(close(a[i], b[i], 1e-5, 1e-6));
  }
}

TEST_CASE(trainer_fit_and_evaluate) {
  torch::manual_seed(2);
  torchext::nn::MLP model(kSeedSizes);
  torchext::optim::SGD optimizer(model->parameters(),
                                 torchext::optim::SGDOptions(1e-2).momentum(0.9));
  torchext::Trainer trainer(model, optimizer);
  auto x = torch::randn({300, 20});
  auto y = torch::randn({300, 40});
  torchext::FitOptions options;
  options.epochs = 3;
  options.batch_size = 128;
  auto losses = trainer.fit(x, y, options);
  EXPECT(losses.size() == 3 && losses[2] < losses[0]);
  EXPECT(trainer.steps() == 9);
  auto full = torch::mse_loss(model->forward(x), y).item<double>();
  EXPECT(std::abs(trainer.evaluate(x, y) - full) <= 1e-5 * full);
}

TEST_CASE(checkpoint_round_trip_continues_exactly) {
  auto make = [](uint64_t seed) {
    torch::manual_seed(seed);
    torchext::nn::MLP model(kSeedSizes);
    model->to(torch::kDouble);
    auto opt = std::make_shared<torchext::optim::SGD>(
        model->parameters(), torchext::optim::SGDOptions(1e-2).momentum(0.9).nesterov(true));
    return std::make_pair(model, opt);
  };
  auto [model, opt] = make(4);
  torchext::Trainer trainer(model, opt);
  auto x = torch::randn({6, 32, 20}, torch::kDouble);
  auto y = torch::randn({6, 32, 40}, torch::kDouble);
  for (int s = 0; s < 3; ++s) {
    trainer.step(x[s], y[s]);
  }
  const std::string path = "torchext_api_test_checkpoint.pt";
  trainer.save(path);
  auto [model2, opt2] = make(99);  // different weights, overwritten by load
  opt2->param_groups()[0].options().set_lr(5.0);
  torchext::Trainer restored(model2, opt2);
  restored.load(path);
  std::remove(path.c_str());
  EXPECT(restored.steps() == 3);
  EXPECT(restored.optimizer().param_groups()[0].options().get_lr() == 1e-2);
  for (int s = 3; s < 6; ++s) {
    EXPECT(trainer.step(x[s], y[s]).item<double>() == restored.step(x[s], y[s]).item<double>());
  }
  auto a = model->parameters();
  auto b = model2->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT(torch::equal(a[i], b[i]));
  }
}

TEST_CASE(state_dict_file_round_trip) {
  torchext::nn::MLP model(kSeedSizes);
  const std::string path = "torchext_api_test_state.pt";
  torchext::save(torchext::state_dict(*model), path);
  torchext::nn::MLP other(kSeedSizes);
  torchext::load_state_dict(*other, path);
  std::remove(path.c_str());
  auto a = model->parameters();
  auto b = other->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT(torch::equal(a[i], b[i]));
  }
}

// ---------------------------------------------------------------------------
// Errors

TEST_CASE(bad_input_raises_clear_errors) {
  torchext::nn::Linear lin(20, 30);
  EXPECT_ERROR(lin->forward(torch::randn({4, 21})), "21");
  EXPECT_ERROR(torchext::nn::MLP(torchext::nn::MLPOptions({20})), "at least two sizes");
  EXPECT_ERROR(torchext::nn::MLP(torchext::nn::MLPOptions({20, 3}).activation("swish")),
               "unknown activation");
  auto p = torch::zeros({2}).requires_grad_();
  EXPECT_ERROR(torchext::optim::SGD({p}, torchext::optim::SGDOptions(-1)),
               "Invalid learning rate: -1");
  EXPECT_ERROR(torchext::optim::SGD({p}, torchext::optim::SGDOptions(0.1).momentum(-0.5)),
               "Invalid momentum value: -0.5");
  EXPECT_ERROR(torchext::optim::SGD({p}, torchext::optim::SGDOptions(0.1).weight_decay(-1)),
               "Invalid weight_decay value: -1");
  EXPECT_ERROR(torchext::optim::SGD({p}, torchext::optim::SGDOptions(0.1).nesterov(true)),
               "Nesterov momentum requires a momentum and zero dampening");

  torchext::nn::MLP model(kSeedSizes);
  auto params = model->parameters();
  torchext::optim::SGD partial(std::vector<torch::Tensor>(params.begin(), params.end() - 1),
                               torchext::optim::SGDOptions(0.1));
  EXPECT_ERROR(torchext::Trainer(model, partial), "does not own the model's parameter '4.bias'");
  EXPECT_ERROR(torchext::Trainer(model, partial, "hinge"), "unknown loss");

  torchext::optim::SGD optimizer(params, torchext::optim::SGDOptions(0.1).momentum(0.9));
  torchext::Trainer trainer(model, optimizer);
  auto before = params[0].clone();
  EXPECT_ERROR(trainer.step(torch::randn({8, 21}), torch::randn({8, 40})), "21");
  EXPECT_ERROR(trainer.step(torch::randn({8, 20}), torch::randn({7, 40})), "");
  EXPECT(torch::equal(before, params[0]));  // nothing changed
  EXPECT(!optimizer.momentum_buffer(params[0]).defined());

  c10::impl::GenericDict bad(c10::StringType::get(), c10::TensorType::get());
  bad.insert("0.weight", torch::zeros({30, 20}));
  EXPECT_ERROR(torchext::load_state_dict(*model, bad), "missing keys [0.bias, 2.weight");
  EXPECT_ERROR(trainer.load_state_dict(c10::IValue(bad)), "missing 'model'");
  EXPECT_ERROR(torchext::load("no_such_checkpoint.pt"), "no such file");
}
