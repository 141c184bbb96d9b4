"""Data-parallel Trainer.fit, evaluate and checkpoints on 2 processes against stock DDP.

The reference loop is the stock one: ``DistributedSampler(dataset, shuffle, seed,
drop_last=False)`` with ``set_epoch``, minibatches of its indices, ``DistributedDataParallel``
and ``torch.optim.SGD``; its epoch loss is the mean over every rank's samples (the sampler's
padding included), and its evaluation the mean over the whole dataset.
"""

import os

import pytest
import torch
import torch.distributed as dist
from ddp_support import ranks  # noqa: F401 - the fixture
from test_ddp_step import DDP, RTOL, SIZES, Scaled, make_trainer, replica
from torch.utils.data import DistributedSampler
from trainer_support import stock_step

import torchext
from torchext.cli_check import max_relative_error

OPTIONS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}


def dataset(samples, loss, dtype):
    """The same data on every rank."""
    gen = torch.Generator().manual_seed(samples)
    x = torch.randn(samples, SIZES[0], generator=gen, dtype=dtype)
    if loss == "mse":
        return x, torch.randn(samples, SIZES[-1], generator=gen, dtype=dtype)
    return x, torch.randint(SIZES[-1], (samples,), generator=gen)


def stock_fit(model, optimizer, loss_fn, x, y, epochs, batch_size, shuffle, seed, start_epoch):
    sampler = DistributedSampler(range(len(x)), shuffle=shuffle, seed=seed)
    losses = []
    for epoch in range(start_epoch, start_epoch + epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            total += stock_step(model, optimizer, loss_fn, x[index], y[index]).item() * len(index)
        mean = torch.tensor([total / len(order)], dtype=torch.float64)
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    return losses


def fit_parity(form, dtype, loss, samples, batch_size, shuffle, epochs=2, seed=7, start_epoch=3):
    model, stock = replica(dtype)
    trainer = make_trainer(form, model, OPTIONS, loss)
    stock_ddp = DDP(stock)
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **OPTIONS)
    x, y = dataset(samples, loss, dtype)
    mine = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                       start_epoch=start_epoch, progress=False)
    ref = stock_fit(stock_ddp, stock_opt, trainer.loss_fn, x, y, epochs, batch_size, shuffle,
                    seed, start_epoch)
    with torch.no_grad():
        ref_eval = trainer.loss_fn(stock(x), y).item()
    return {"losses": (mine, ref), "evaluate": (trainer.evaluate(x, y, batch_size=3), ref_eval),
            "param_error": max(max_relative_error(p.detach(), q.detach())
                               for p, q in zip(model.parameters(), stock.parameters())),
            "params": [p.detach().clone() for p in model.parameters()], "steps": trainer.steps}


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("samples,batch_size", [(37, 5), (40, 64), (3, 2)],
                         ids=["padded-uneven-last", "batch-over-shard", "fewer-than-batch"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "in-order"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fit_matches_stock_ddp_with_distributed_sampler(ranks, dtype, loss, shuffle,  # noqa: F811
                                                        samples, batch_size):
    form = "ddp" if shuffle else "process_group"
    results = ranks.run(fit_parity, form, dtype, loss, samples, batch_size, shuffle)
    rtol = RTOL[dtype]
    per_rank = -(-samples // 2)
    for r in results:
        mine, ref = r["losses"]
        assert len(mine) == 2 and max(relative(a, b) for a, b in zip(mine, ref)) <= rtol
        assert relative(*r["evaluate"]) <= rtol
        assert r["param_error"] <= rtol
        assert r["steps"] == 2 * -(-per_rank // min(batch_size, per_rank))
    assert results[0]["losses"][0] == results[1]["losses"][0]  # global means: the same
    assert results[0]["evaluate"][0] == results[1]["evaluate"][0]
    assert all(torch.equal(p, q) for p, q in zip(results[0]["params"], results[1]["params"]))


def single_process_seed_order():
    """Without a process group, seed= gives DistributedSampler's order for a world of one."""
    torch.manual_seed(0)
    model = torchext.nn.MLP(SIZES, activation="tanh", dtype=torch.float64)
    stock = torch.nn.Sequential(torch.nn.Linear(6, 12, dtype=torch.float64), torch.nn.Tanh(),
                                torch.nn.Linear(12, 10, dtype=torch.float64), torch.nn.Tanh(),
                                torch.nn.Linear(10, 5, dtype=torch.float64))
    stock.load_state_dict(model.state_dict())
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), **OPTIONS))
    stock_opt = torch.optim.SGD(stock.parameters(), **OPTIONS)
    x, y = dataset(21, "mse", torch.float64)
    mine = trainer.fit(x, y, epochs=2, batch_size=4, seed=5, start_epoch=1, progress=False)
    ref = []
    for epoch in (1, 2):
        sampler = DistributedSampler(range(21), num_replicas=1, rank=0, seed=5)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        total = sum(stock_step(stock, stock_opt, trainer.loss_fn, x[order[s:s + 4]],
                               y[order[s:s + 4]]).item() * len(order[s:s + 4])
                    for s in range(0, 21, 4))
        ref.append(total / 21)
    return mine, ref, max_relative_error(model[0].weight.detach(), stock[0].weight.detach())


def test_seed_without_process_group_is_distributed_samplers_order():
    mine, ref, error = single_process_seed_order()
    assert max(relative(a, b) for a, b in zip(mine, ref)) <= 1e-10 and error <= 1e-10


def test_shards_are_distributed_samplers():
    for samples in (1, 2, 5, 16, 33):
        for world in (1, 2, 3, 7):
            for shuffle in (True, False):
                for rank in range(world):
                    sampler = DistributedSampler(range(samples), num_replicas=world, rank=rank,
                                                 shuffle=shuffle, seed=11)
                    sampler.set_epoch(4)
                    mine = torchext._C.data_parallel.shard_indices(samples, rank, world, shuffle,
                                                                    11, 4)
                    assert mine.tolist() == list(sampler), (samples, world, shuffle, rank)


# ---------------------------------------------------------------------------------- checkpoints

def checkpoint_resume(folder):
    """Two epochs straight, against one epoch, save, a fresh replica, load, one more epoch."""
    dtype = torch.float64
    x, y = dataset(30, "mse", dtype)
    model, _ = replica(dtype)
    trainer = make_trainer("process_group", model, OPTIONS, "mse")
    straight = trainer.fit(x, y, epochs=2, batch_size=4, seed=1, progress=False)
    path = os.path.join(folder, "resume.pt")
    model, _ = replica(dtype)
    first = make_trainer("ddp", model, OPTIONS, "mse")
    losses = first.fit(x, y, epochs=1, batch_size=4, seed=1, progress=False)
    write = torchext.trainer.write_atomically
    if dist.get_rank() != 0:  # only rank 0 may write
        def refuse(*args, **kwargs):
            raise AssertionError("a rank other than 0 wrote the checkpoint")
        torchext.trainer.write_atomically = refuse
    try:
        first.save(path)
    finally:
        torchext.trainer.write_atomically = write
    saved = os.path.exists(path)
    model, _ = replica(dtype, seed_offset=50)  # other weights until load
    resumed = make_trainer("process_group", model, OPTIONS, "mse")
    resumed.load(path)
    losses += resumed.fit(x, y, epochs=1, batch_size=4, seed=1, start_epoch=1, progress=False)
    return (straight, losses, saved, resumed.steps, trainer.steps,
            [(p.detach().clone(), q.detach().clone())
             for p, q in zip(trainer.model.parameters(), model.parameters())])


def test_checkpoint_on_rank0_resumes_on_every_rank_as_uninterrupted(ranks):  # noqa: F811
    for straight, resumed, saved, steps, straight_steps, pairs in ranks.run(checkpoint_resume,
                                                                           ranks.folder):
        assert saved and resumed == straight and steps == straight_steps
        assert all(torch.equal(p, q) for p, q in pairs)


def load_mismatched(folder):
    """Each rank loads a different checkpoint: every rank refuses, nothing changes."""
    model, _ = replica(torch.float64)
    trainer = make_trainer("process_group", model, OPTIONS, "mse")
    path = os.path.join(folder, f"rank{dist.get_rank()}.pt")
    # Written by hand on every rank (Trainer.save writes on rank 0 only).
    state = trainer.state_dict()
    state["step"] = dist.get_rank()
    torch.save(state, path)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        trainer.load(path)
    except Exception as exc:  # noqa: BLE001
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = None
    return error, all(torch.equal(p, q) for p, q in zip(before, model.parameters())), \
        trainer.steps


def test_ranks_loading_different_checkpoints_all_refuse(ranks):  # noqa: F811
    for error, unchanged, steps in ranks.run(load_mismatched, ranks.folder):
        assert error is not None and "rank 1" in error and "step count" in error, error
        assert unchanged and steps == 0


def save_failing_on_rank0(folder):
    model, _ = replica(torch.float64)
    trainer = make_trainer("process_group", model, OPTIONS, "mse")
    try:
        trainer.save(folder)  # a directory: refused on rank 0
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def test_a_failed_save_on_rank0_raises_on_every_rank(ranks):  # noqa: F811
    error0, error1 = ranks.run(save_failing_on_rank0, ranks.folder)
    assert error0.startswith("CheckpointError") and "directory" in error0, error0
    assert "rank 0 refused" in error1, error1


def eager_fit_parity(form):
    """A model the core does not run: the eager loop's shards, losses and evaluate."""
    dtype = torch.float64
    torch.manual_seed(7 + dist.get_rank())
    model, stock = Scaled(dtype), Scaled(dtype)
    stock.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), **OPTIONS)
    trainer = torchext.Trainer(DDP(model) if form == "ddp" else model, optimizer,
                               process_group=None if form == "ddp" else dist.group.WORLD)
    assert trainer.backend == "eager"
    stock_ddp = DDP(stock)
    stock_opt = torch.optim.SGD(stock_ddp.parameters(), **OPTIONS)
    x, y = dataset(23, "mse", dtype)
    mine = trainer.fit(x, y, epochs=2, batch_size=4, seed=2, progress=False)
    ref = stock_fit(stock_ddp, stock_opt, trainer.loss_fn, x, y, 2, 4, True, 2, 0)
    with torch.no_grad():
        ref_eval = trainer.loss_fn(stock(x), y).item()
    return mine, ref, trainer.evaluate(x, y, batch_size=5), ref_eval, \
        max(max_relative_error(p.detach(), q.detach())
            for p, q in zip(model.parameters(), stock.parameters()))


@pytest.mark.parametrize("form", ["ddp", "process_group"])
def test_eager_fit_and_evaluate_match_stock_ddp(ranks, form):  # noqa: F811
    results = ranks.run(eager_fit_parity, form)
    for mine, ref, evaluation, ref_eval, param_error in results:
        assert max(relative(a, b) for a, b in zip(mine, ref)) <= 1e-10
        assert relative(evaluation, ref_eval) <= 1e-10 and param_error <= 1e-10
    assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
