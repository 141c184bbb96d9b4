"""Data-parallel Trainer.step on 2 processes (gloo, loopback) against stock DDP + torch.optim.SGD.

Each rank starts from its own random weights (the Trainer, like DDP, must replace them with rank
0's) and steps on its own batches, of different sizes per rank; the reference is a stock
``nn.Sequential`` in ``DistributedDataParallel`` with ``torch.optim.SGD`` on the same batches,
in the same processes. After every step the parameters must match the reference (float64 to
1e-10, float32 to 1e-5, relative) and be bit-identical on both ranks.
"""

import pytest
import torch
import torch.distributed as dist
from ddp_support import Ranks, ranks  # noqa: F401 - the fixture
from torch import nn
from trainer_support import stock_step

import torchext
from torchext.cli_check import max_relative_error

DDP = nn.parallel.DistributedDataParallel
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
SIZES = [6, 12, 10, 5]
OPTIONS = {
    "plain": {"lr": 0.05},
    "momentum-dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1},
    "nesterov-decay": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    "maximize": {"lr": 0.01, "momentum": 0.5, "maximize": True, "weight_decay": 1e-3},
}


def replica(dtype, activation="tanh", sizes=SIZES, seed_offset=0):
    """A torchext MLP with this rank's own initial weights, and its stock twin."""
    torch.manual_seed(100 + dist.get_rank() + seed_offset)
    model = torchext.nn.MLP(sizes, activation=activation, dtype=dtype)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append({"tanh": nn.Tanh, "relu": nn.ReLU}[activation]())
    stock = nn.Sequential(*layers)
    stock.load_state_dict(model.state_dict())
    return model, stock


def batch(step, loss, dtype, rows=None):
    """This rank's batch of `step` (rank 1's is larger)."""
    gen = torch.Generator().manual_seed(1000 * dist.get_rank() + step)
    rows = rows or 8 + 3 * dist.get_rank()
    x = torch.randn(rows, SIZES[0], generator=gen, dtype=dtype)
    if loss == "mse":
        return x, torch.randn(rows, SIZES[-1], generator=gen, dtype=dtype)
    return x, torch.randint(SIZES[-1], (rows,), generator=gen)


def make_trainer(form, model, options, loss):
    """The Trainer in one of the two forms: a DDP-wrapped model, or process_group=."""
    if form == "ddp":  # with torch's optimizer
        return torchext.Trainer(DDP(model), torch.optim.SGD(model.parameters(), **options), loss)
    return torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **options), loss,
                            process_group=dist.group.WORLD)


def step_parity(form, dtype, loss, option_name, steps=4):
    options = OPTIONS[option_name]
    model, stock = replica(dtype)
    stock_ddp = DDP(stock)
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **options)
    trainer = make_trainer(form, model, options, loss)
    assert trainer.backend == "cpu"
    loss_fn = trainer.loss_fn
    history = []
    for step in range(steps):
        x, y = batch(step, loss, dtype)
        mine = trainer.step(x, y)
        ref = stock_step(stock_ddp, stock_opt, loss_fn, x, y)
        history.append((max_relative_error(mine, ref),
                        max(max_relative_error(p.detach(), q.detach())
                            for p, q in zip(model.parameters(), stock.parameters())),
                        [p.detach().clone() for p in model.parameters()]))
    assert trainer.steps == steps
    return history


@pytest.mark.parametrize("option_name", list(OPTIONS))
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("form", ["ddp", "process_group"])
def test_step_matches_stock_ddp(ranks, form, dtype, loss, option_name):  # noqa: F811
    results = ranks.run(step_parity, form, dtype, loss, option_name)
    rtol = RTOL[dtype]
    for rank_history in results:
        for step, (loss_error, param_error, _) in enumerate(rank_history):
            assert loss_error <= rtol, (step, loss_error)  # this rank's own loss
            assert param_error <= rtol, (step, param_error)
    for step, (r0, r1) in enumerate(zip(results[0], results[1])):
        for p, q in zip(r0[2], r1[2]):
            assert torch.equal(p, q), f"ranks differ after step {step}"


def broadcast_at_construction(form):
    model, _ = replica(torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    make_trainer(form, model, {"lr": 0.1}, "mse")
    return before, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("form", ["ddp", "process_group"])
def test_construction_copies_rank0_parameters(ranks, form):  # noqa: F811
    (before0, after0), (before1, after1) = ranks.run(broadcast_at_construction, form)
    assert not all(torch.equal(p, q) for p, q in zip(before0, before1))  # they did differ
    for p, q, r in zip(before0, after0, after1):
        assert torch.equal(p, q) and torch.equal(p, r)


def mixed_with_stock_steps(dtype):
    """Trainer steps and hand-written DDP steps on the same DDP model and optimizer."""
    options = {"lr": 0.05, "momentum": 0.9}
    model, stock = replica(dtype)
    ddp = DDP(model)
    optimizer = torch.optim.SGD(model.parameters(), **options)
    trainer = torchext.Trainer(ddp, optimizer, "mse")
    stock_ddp = DDP(stock)
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **options)
    for step in range(6):
        x, y = batch(step, "mse", dtype)
        if step % 2:
            stock_step(ddp, optimizer, trainer.loss_fn, x, y)
        else:
            trainer.step(x, y)
        stock_step(stock_ddp, stock_opt, trainer.loss_fn, x, y)
    return (max(max_relative_error(p.detach(), q.detach())
                for p, q in zip(model.parameters(), stock.parameters())),
            [p.detach().clone() for p in model.parameters()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_trainer_and_hand_written_ddp_steps_mix(ranks, dtype):  # noqa: F811
    (error0, params0), (error1, params1) = ranks.run(mixed_with_stock_steps, dtype)
    assert max(error0, error1) <= RTOL[dtype]
    assert all(torch.equal(p, q) for p, q in zip(params0, params1))


class Scaled(nn.Module):
    """Not a chain of dense layers (a LayerNorm): the Trainer runs it eagerly."""

    def __init__(self, dtype):
        super().__init__()
        self.linear = nn.Linear(SIZES[0], SIZES[-1], dtype=dtype)
        self.norm = nn.LayerNorm(SIZES[-1], dtype=dtype)

    def forward(self, x):
        return self.norm(self.linear(x))


def eager_parity(form):
    dtype = torch.float64
    torch.manual_seed(7 + dist.get_rank())
    model = Scaled(dtype)
    stock = Scaled(dtype)
    stock.load_state_dict(model.state_dict())
    options = {"lr": 0.05, "momentum": 0.9}
    if form == "ddp":
        trainer = torchext.Trainer(DDP(model), torch.optim.SGD(model.parameters(), **options))
    else:
        trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), **options),
                                   process_group=dist.group.WORLD)
    assert trainer.backend == "eager"
    stock_ddp = DDP(stock)
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **options)
    for step in range(3):
        x, y = batch(step, "mse", dtype)
        trainer.step(x, y)
        stock_step(stock_ddp, stock_opt, trainer.loss_fn, x, y)
    return [(p.detach().clone(), q.detach().clone())
            for p, q in zip(model.parameters(), stock.parameters())]


@pytest.mark.parametrize("form", ["ddp", "process_group"])
def test_models_the_core_does_not_run_train_as_stock_ddp(ranks, form):  # noqa: F811
    results = ranks.run(eager_parity, form)
    for pairs in results:
        for p, q in pairs:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    for (p, _), (q, _) in zip(*results):
        assert torch.equal(p, q)


def cuda_step_parity(dtype):
    """step_parity on this rank's GPU, over the group's backend (NCCL)."""
    device = torch.device("cuda", torch.cuda.current_device())
    model, stock = replica(dtype)
    model, stock = model.to(device), stock.to(device)
    stock_ddp = DDP(stock, device_ids=[device.index])
    options = OPTIONS["nesterov-decay"]
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **options)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **options), "mse",
                               process_group=dist.group.WORLD)
    assert trainer.backend == "cuda"
    for step in range(4):
        x, y = (t.to(device) for t in batch(step, "mse", dtype))
        trainer.step(x, y)
        stock_step(stock_ddp, stock_opt, trainer.loss_fn, x, y)
    x, y = (t.to(device) for t in batch(9, "mse", dtype, rows=40))
    losses = trainer.fit(x, y, epochs=2, batch_size=6, progress=False)
    return (max(max_relative_error(p.detach(), q.detach())
                for p, q in zip(model.parameters(), stock.parameters())),
            losses, [p.detach().cpu() for p in model.parameters()])


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs CUDA and NCCL")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_step_on_cuda_over_nccl_matches_stock_ddp(dtype):
    world = Ranks(world_size=min(2, torch.cuda.device_count()), backend="nccl")
    try:
        results = world.run(cuda_step_parity, dtype)
    finally:
        world.close()
    for error, losses, _ in results:
        assert error <= RTOL[dtype] and len(losses) == 2
    for _, losses, params in results[1:]:
        assert losses == results[0][1]
        assert all(torch.equal(p, q) for p, q in zip(params, results[0][2]))
