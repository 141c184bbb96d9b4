"""torchext.Trainer against the stock PyTorch training loop, computed in the same test.

Stock loop: ``optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()``
on a deep copy. Backends: the fused CPU core (in the ISA build the CPU picks, and in each other
build it runs: ``core-AVX2``, ``core-DEFAULT``), the ATen reference step (the code CUDA runs) on
the CPU, CUDA when present, and the eager fallback.
"""

import copy
import itertools

import pytest
import torch
from cpu_isa_support import SUPPORTED_ISAS
from torch import nn
from trainer_support import stock_step

import torchext
from torchext import _C
from torchext.nn import MLP

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
ACTIVATIONS = ["identity", "relu", "tanh", "sigmoid", "gelu"]
# A spread of SGD options, assigned round-robin to the parity cases.
SGD_OPTIONS = [
    dict(lr=1e-2, momentum=0.9),
    dict(lr=5e-2),
    dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=2e-2, momentum=0.5, dampening=0.3, maximize=False),
    dict(lr=1e-2, momentum=0.9, weight_decay=1e-3, maximize=True),
]
OTHER_CPU_BUILDS = [f"core-{isa}" for isa in SUPPORTED_ISAS if isa != _C.cpu_capability()]
BACKENDS = ["core", *OTHER_CPU_BUILDS, "reference"]
BACKENDS += ["cuda"] if torch.cuda.is_available() else []


@pytest.fixture(autouse=True)
def _default_cpu_build():
    yield
    _C._set_cpu_capability(None)  # undo a core-ISA backend's pin


def make_data(loss, n, sizes, dtype, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes[0], generator=gen, dtype=dtype)
    if loss == "mse":
        y = torch.randn(n, sizes[-1], generator=gen, dtype=dtype)
    else:
        y = torch.randint(0, sizes[-1], (n,), generator=gen)
    return x.to(device), y.to(device)


def make_trainer(model, opt, loss, backend):
    if backend.startswith("core-"):
        _C._set_cpu_capability(backend.removeprefix("core-"))
    trainer = torchext.Trainer(model, opt, loss)
    if backend == "reference":
        trainer._core.use_reference_kernels(True)
    return trainer


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def assert_params_close(model, ref, dtype):
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


CASES = list(itertools.product(ACTIVATIONS, ["mse", "cross_entropy"],
                               [torch.float32, torch.float64], [True, False]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=["-".join(str(v).replace("torch.", "") for v in c) for c in CASES])
def test_fifty_steps_match_stock_loop(backend, case):
    activation, loss, dtype, bias = CASES[case]
    options = SGD_OPTIONS[case % len(SGD_OPTIONS)]
    optimizer_cls = torchext.optim.SGD if case % 2 else torch.optim.SGD
    device = device_of(backend)
    sizes = [6, 9, 7, 5]
    torch.manual_seed(case)
    model = MLP(sizes, activation=activation, bias=bias, dtype=dtype, device=device)
    ref = copy.deepcopy(model)
    trainer = make_trainer(model, optimizer_cls(model.parameters(), **options), loss, backend)
    assert trainer.backend == ("cuda" if backend == "cuda" else "cpu")
    ref_opt = torch.optim.SGD(ref.parameters(), **options)
    loss_fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    for step in range(50):
        x, y = make_data(loss, 16 if step % 7 else 11, sizes, dtype, device, seed=step)
        got = trainer.step(x, y)
        expected = stock_step(ref, ref_opt, loss_fn, x, y)
        assert got.shape == () and got.dtype == dtype and got.device == x.device
        torch.testing.assert_close(got, expected, **TOL[dtype])
    assert_params_close(model, ref, dtype)
    for p, q in zip(model.parameters(), ref.parameters()):
        mine = trainer.optimizer.state[p].get("momentum_buffer")
        theirs = ref_opt.state[q].get("momentum_buffer")
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_matches_stock_loop_over_the_same_permutation(backend):
    device = device_of(backend)
    torch.manual_seed(0)
    model = MLP([20, 30, 30, 40], dtype=torch.float64, device=device)
    ref = copy.deepcopy(model)
    trainer = make_trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9),
                           "mse", backend)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    x, y = make_data("mse", 300, [20, 40], torch.float64, device)
    seen = []
    losses = trainer.fit(x, y, epochs=3, batch_size=64, generator=torch.Generator().manual_seed(5),
                         progress=lambda *args: seen.append(args))
    gen = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(3):
        order = torch.randperm(300, generator=gen).to(device)
        total = 0.0
        for start in range(0, 300, 64):  # the last batch has 44 rows
            index = order[start:start + 64]
            total += stock_step(ref, ref_opt, nn.MSELoss(), x[index], y[index]).item() * len(index)
        expected.append(total / 300)
    assert losses == pytest.approx(expected, rel=1e-10)
    assert_params_close(model, ref, torch.float64)
    assert trainer.steps == 3 * 5
    assert seen and seen[-1][:3] == (2, 5, 5) and seen[-1][3] == pytest.approx(expected[-1])


def test_fit_without_shuffle_and_default_generator_matches_stock():
    torch.manual_seed(0)
    model = MLP([5, 8, 3], activation="tanh", dtype=torch.float64)
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "cross_entropy")
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = make_data("cross_entropy", 50, [5, 3], torch.float64, "cpu")
    trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, progress=False)
    for _ in range(2):
        for start in range(0, 50, 16):
            rows = slice(start, start + 16)
            stock_step(ref, ref_opt, nn.CrossEntropyLoss(), x[rows], y[rows])
    assert_params_close(model, ref, torch.float64)
    torch.manual_seed(3)
    trainer.fit(x, y, epochs=1, batch_size=16, progress=False)
    torch.manual_seed(3)
    order = torch.randperm(50)
    for start in range(0, 50, 16):
        index = order[start:start + 16]
        stock_step(ref, ref_opt, nn.CrossEntropyLoss(), x[index], y[index])
    assert_params_close(model, ref, torch.float64)


def test_mixed_trainer_and_hand_written_steps_continue_identically():
    torch.manual_seed(0)
    model = MLP([20, 30, 30, 40], activation="gelu", dtype=torch.float64)
    ref = copy.deepcopy(model)
    opt = torchext.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    trainer = torchext.Trainer(model, opt, nn.MSELoss())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    for step in range(30):
        x, y = make_data("mse", 32, [20, 40], torch.float64, "cpu", seed=step)
        if 10 <= step < 20:
            stock_step(model, opt, nn.MSELoss(), x, y)  # the user's own loop, same objects
        else:
            trainer.step(x, y)
        stock_step(ref, ref_opt, nn.MSELoss(), x, y)
    assert_params_close(model, ref, torch.float64)


def test_lr_scheduler_and_param_groups_are_read_every_step():
    torch.manual_seed(0)
    model = MLP([4, 6, 3], dtype=torch.float64)
    ref = copy.deepcopy(model)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.05},
                {"params": m[2].parameters(), "momentum": 0.5}]

    opt = torchext.optim.SGD(groups(model), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(groups(ref), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    trainer = torchext.Trainer(model, opt)
    for step in range(10):
        x, y = make_data("mse", 8, [4, 3], torch.float64, "cpu", seed=step)
        trainer.step(x, y)
        stock_step(ref, ref_opt, nn.MSELoss(), x, y)
        sched.step()
        ref_sched.step()
    assert_params_close(model, ref, torch.float64)


def test_my_network_from_the_walkthrough_runs_on_the_core():
    class MyNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_1 = torchext.nn.Linear(20, 30)
            self.layer_2 = torchext.nn.Linear(30, 30)
            self.layer_3 = torchext.nn.Linear(30, 40)

        def forward(self, x):
            return self.layer_3(self.layer_2(self.layer_1(x)))

    torch.manual_seed(0)
    model = MyNetwork()
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-2,
                                                         momentum=0.9))
    assert trainer.backend == "cpu"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    x, y = make_data("mse", 128, [20, 40], torch.float32, "cpu")
    for _ in range(20):
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, nn.MSELoss(), x, y),
                                   **TOL[torch.float32])
    assert_params_close(model, ref, torch.float32)


@pytest.mark.parametrize("model_fn", [
    lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.ReLU(), nn.Linear(6, 3)),  # act, act
    lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)),
    lambda: nn.Sequential(nn.Linear(4, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 3)),
])
def test_other_models_fall_back_to_eager_with_the_same_semantics(model_fn):
    torch.manual_seed(0)
    model = model_fn().double()
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert trainer.backend == "eager"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(5):
        x, y = make_data("mse", 8, [4, 3], torch.float64, "cpu", seed=step)
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, nn.MSELoss(), x, y))
    assert_params_close(model, ref, torch.float64)
    x, y = make_data("mse", 20, [4, 3], torch.float64, "cpu")
    assert trainer.evaluate(x, y, batch_size=7) == pytest.approx(
        nn.functional.mse_loss(ref(x), y).item(), rel=1e-12)


def test_non_default_loss_module_and_other_optimizers_run_eagerly():
    model = MLP([4, 3])
    assert torchext.Trainer(model, torch.optim.SGD(model.parameters()),
                            nn.MSELoss(reduction="sum")).backend == "eager"
    assert torchext.Trainer(model, torch.optim.Adam(model.parameters())).backend == "eager"
    assert torchext.Trainer(model.half(), torch.optim.SGD(model.parameters())).backend == "eager"


def test_optimizer_step_hooks_still_run():
    model = MLP([4, 3], dtype=torch.float64)
    opt = torchext.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(1))
    trainer = torchext.Trainer(model, opt)
    trainer.step(*make_data("mse", 8, [4, 3], torch.float64, "cpu"))
    assert calls == [1]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_evaluate_matches_stock(loss):
    torch.manual_seed(0)
    model = MLP([6, 10, 4], activation="sigmoid", dtype=torch.float64)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss)
    x, y = make_data(loss, 45, [6, 4], torch.float64, "cpu")
    loss_fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    with torch.no_grad():
        expected = loss_fn(model(x), y).item()
    assert trainer.evaluate(x, y) == pytest.approx(expected, rel=1e-12)
    assert trainer.evaluate(x, y, batch_size=8) == pytest.approx(expected, rel=1e-12)


class _ScaledLinear(nn.Linear):
    def forward(self, x):  # not Linear's forward: the core must not run it as one
        return super().forward(x) * 2


class _PlainLinear(nn.Linear):
    pass


def _hooked():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    model[0].register_forward_hook(lambda module, args, out: out * 2)  # changes the output
    return model


@pytest.mark.parametrize("make, backend", [
    (lambda: nn.Sequential(_ScaledLinear(4, 6), nn.ReLU(), nn.Linear(6, 3)), "eager"),
    (lambda: nn.Sequential(_PlainLinear(4, 6), nn.ReLU(), torchext.nn.Linear(6, 3)), "cpu"),
    (_hooked, "eager"),
], ids=["overridden forward", "inherited forward", "forward hook"])
def test_layers_are_recognised_by_the_forward_they_run(make, backend):
    model = make().double()
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert trainer.backend == backend
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        x, y = make_data("mse", 8, [4, 3], torch.float64, "cpu", seed=step)
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, nn.MSELoss(), x, y))
    assert_params_close(model, ref, torch.float64)
