"""Mixed precision: ``Trainer(..., precision=...)`` against the stock loop under ``torch.autocast``.

Stock loop, on a deep copy, in the same test: ``zero_grad``; the forward and the loss under
``torch.autocast(device, bfloat16 | float16)``; ``backward`` and ``step`` (through a
``torch.amp.GradScaler`` for ``"16-mixed"``). Over 100 steps the losses agree within 2 %
relative at every step and the final parameters within bfloat16 tolerance, on the seed network
(the CPU's emulated kernels) and a wide one (compute-dtype ATen kernels and the fused update),
for both losses, every activation and the SGD options; the ATen reference path (the code CUDA
runs) is held to much tighter bounds, since it runs the very ops autocast runs.
"""

import copy
import itertools

import pytest
import torch
from torch import nn
from trainer_support import stock_mixed_step

import torchext
from torchext.nn import MLP

DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
ACTIVATIONS = ["identity", "relu", "tanh", "sigmoid", "gelu"]
SGD_OPTIONS = [
    dict(lr=1e-2, momentum=0.9),
    dict(lr=5e-2),
    dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=2e-2, momentum=0.5, dampening=0.3),
    dict(lr=1e-2, momentum=0.9, weight_decay=1e-3, maximize=True),
]
BACKENDS = ["core", "reference"] + (["cuda"] if torch.cuda.is_available() else [])
SEED, WIDE = [20, 30, 30, 40], [48, 256, 256, 24]
# Per-step relative loss difference allowed (the 2 %; the reference path runs autocast's
# own ops, so it stays far closer).
LOSS_RTOL = {"core": 2e-2, "cuda": 2e-2, "reference": 1e-4}


def assert_close_bf16(actual, expected, what):
    """Within bfloat16 tolerance: torch.testing's rtol for bfloat16, and an atol of bfloat16's
    resolution near the tensor's largest entries (2**-8 of them; rounding differences in the
    gradients move small entries by amounts of the order of the large ones' precision)."""
    atol = 2.0**-8 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1.6e-2, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def make_data(loss, n, sizes, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes[0], generator=gen)
    if loss == "mse":
        y = torch.randn(n, sizes[-1], generator=gen)
    else:
        y = torch.randint(0, sizes[-1], (n,), generator=gen)
    return x.to(device), y.to(device)


def make_trainer(model, opt, loss, precision, backend, **kwargs):
    trainer = torchext.Trainer(model, opt, loss, precision=precision, **kwargs)
    if backend == "reference":
        trainer._core.use_reference_kernels(True)
    return trainer


def compare_runs(sizes, activation, loss, precision, backend, options, optimizer_cls, steps=100,
                 batch=32, bias=True):
    """Runs both loops; returns (trainer, stock model, stock optimizer, stock scaler)."""
    device = "cuda" if backend == "cuda" else "cpu"
    torch.manual_seed(len(sizes) + ACTIVATIONS.index(activation))
    model = MLP(sizes, activation=activation, bias=bias, device=device)
    ref = copy.deepcopy(model)
    trainer = make_trainer(model, optimizer_cls(model.parameters(), **options), loss, precision,
                           backend)
    ref_opt = torch.optim.SGD(ref.parameters(), **options)
    ref_scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None
    loss_fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = make_data(loss, batch if step % 7 else batch - 5, sizes, device, seed=step)
        got = trainer.step(x, y)
        expected = stock_mixed_step(ref, ref_opt, loss_fn, x, y, DTYPES[precision], ref_scaler)
        assert got.dtype == torch.float32 and got.shape == ()
        torch.testing.assert_close(got, expected, rtol=LOSS_RTOL[backend], atol=0,
                                   msg=lambda m, step=step: f"step {step}: {m}")
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.dtype == torch.float32
        assert_close_bf16(p, q, name)
        mine = trainer.optimizer.state[p].get("momentum_buffer")
        theirs = ref_opt.state[q].get("momentum_buffer")
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert mine.dtype == torch.float32
            assert_close_bf16(mine, theirs, f"{name} momentum buffer")
    if ref_scaler is not None:
        assert trainer.scaler.state_dict() == ref_scaler.state_dict()
    return trainer


SEED_CASES = list(itertools.product(ACTIVATIONS, ["mse", "cross_entropy"]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("case", range(len(SEED_CASES)),
                         ids=["-".join(c) for c in SEED_CASES])
def test_seed_network_100_steps_match_stock_autocast(backend, precision, case):
    activation, loss = SEED_CASES[case]
    optimizer_cls = torchext.optim.SGD if case % 2 else torch.optim.SGD
    trainer = compare_runs(SEED, activation, loss, precision, backend,
                           SGD_OPTIONS[case % len(SGD_OPTIONS)], optimizer_cls)
    assert trainer.precision == precision
    assert trainer._core.mixed_kernels == ("emulated" if backend == "core" else "aten")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_wide_network_100_steps_match_stock_autocast(backend, precision, activation):
    case = ACTIVATIONS.index(activation)
    loss = ["mse", "cross_entropy"][case % 2]
    trainer = compare_runs(WIDE, activation, loss, precision, backend,
                           SGD_OPTIONS[(case + 1) % len(SGD_OPTIONS)], torchext.optim.SGD,
                           bias=case != 3)
    assert trainer._core.mixed_kernels == "aten"


@pytest.mark.parametrize("precision", list(DTYPES))
def test_param_groups_and_frozen_layers_match_stock_autocast(precision):
    torch.manual_seed(0)
    model = MLP(WIDE, activation="gelu")
    model[0].requires_grad_(False)  # frozen: no gradient, no update, no buffer
    ref = copy.deepcopy(model)

    def groups(m):
        return [{"params": m[2].parameters(), "lr": 0.05, "momentum": 0.5},
                {"params": m[4].parameters(), "weight_decay": 1e-2, "nesterov": True}]

    trainer = torchext.Trainer(model, torchext.optim.SGD(groups(model), lr=1e-2, momentum=0.9),
                               "mse", precision=precision)
    ref_opt = torch.optim.SGD(groups(ref), lr=1e-2, momentum=0.9)
    ref_scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    frozen = [p.clone() for p in model[0].parameters()]
    for step in range(30):
        x, y = make_data("mse", 16, WIDE, "cpu", seed=step)
        got = trainer.step(x, y)
        expected = stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, DTYPES[precision],
                                    ref_scaler)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=0)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_close_bf16(p, q, name)
    assert all(torch.equal(p, f) for p, f in zip(model[0].parameters(), frozen))
    assert not any(p in trainer.optimizer.state for p in model[0].parameters())


@pytest.mark.parametrize("precision", list(DTYPES))
def test_fit_and_evaluate_match_stock_autocast(precision):
    torch.manual_seed(0)
    model = MLP(SEED, activation="tanh")
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-2,
                                                         momentum=0.9), "mse",
                               precision=precision)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    ref_scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    x, y = make_data("mse", 300, SEED, "cpu", seed=1)
    losses = trainer.fit(x, y, epochs=3, batch_size=64, generator=torch.Generator().manual_seed(5),
                         progress=False)
    gen = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(3):
        order = torch.randperm(300, generator=gen)
        total = 0.0
        for start in range(0, 300, 64):
            index = order[start:start + 64]
            total += stock_mixed_step(ref, ref_opt, nn.MSELoss(), x[index], y[index],
                                      DTYPES[precision], ref_scaler).item() * len(index)
        expected.append(total / 300)
    assert losses == pytest.approx(expected, rel=1e-3)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_close_bf16(p, q, name)
    assert trainer.steps == 15
    with torch.no_grad(), torch.autocast("cpu", dtype=DTYPES[precision]):
        stock_eval = sum(nn.functional.mse_loss(ref(x[s:s + 100]), y[s:s + 100]).item() * 100
                         for s in range(0, 300, 100)) / 300
    assert trainer.evaluate(x, y, batch_size=100) == pytest.approx(stock_eval, rel=1e-3)


@pytest.mark.parametrize("precision", list(DTYPES))
def test_eager_fallback_runs_the_stock_autocast_loop(precision):
    class Residual(nn.Module):  # not a chain of dense layers: trained eagerly
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    torch.manual_seed(0)
    model = Residual()
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), "mse",
                               precision=precision)
    assert trainer.backend == "eager"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    ref_scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    for step in range(10):
        x, y = make_data("mse", 16, [8, 4], "cpu", seed=step)
        got = trainer.step(x, y)
        expected = stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, DTYPES[precision],
                                    ref_scaler)
        assert torch.equal(got, expected)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    if ref_scaler is not None:
        assert trainer.scaler.state_dict() == ref_scaler.state_dict()
    with torch.no_grad(), torch.autocast("cpu", dtype=DTYPES[precision]):
        expected = nn.functional.mse_loss(ref(x), y).item()
    assert trainer.evaluate(x, y) == pytest.approx(expected, rel=1e-6)
