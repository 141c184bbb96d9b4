"""Data-parallel failures on 2 processes: each is an error on every rank, never a hang.

Mismatched models and arguments are refused on every rank with the rank and the parameter or
setting named; a rank that raises inside fit (a callback, Ctrl-C) stops the others at the same
step; a rank that dies or hangs makes the others raise within the process group's timeout,
naming the collective, with their parameters and step count as before the failed step.
"""

import os
import time

import pytest
import torch
import torch.distributed as dist
from ddp_support import Ranks, ranks  # noqa: F401 - the fixture
from test_ddp_step import DDP, batch, make_trainer, replica

import torchext


def outcome(fn):
    """fn()'s error as "Type: message", or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def mismatched_model(kind):
    sizes, activation, dtype = [6, 12, 10, 5], "tanh", torch.float64
    if dist.get_rank() == 1:
        if kind == "shape":
            sizes = [6, 13, 10, 5]
        elif kind == "layers":
            sizes = [6, 12, 5]
        elif kind == "dtype":
            dtype = torch.float32
        else:
            activation = "relu"
    model, _ = replica(dtype, activation=activation, sizes=sizes)
    before = [p.detach().clone() for p in model.parameters()]
    error = outcome(lambda: make_trainer("process_group", model, {"lr": 0.1}, "mse"))
    return error, all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


@pytest.mark.parametrize("kind,expected", [
    ("shape", "has '0.weight' of shape [13, 6] and dtype float64, where rank 0 has '0.weight' "
              "of shape [12, 6]"),
    ("layers", "has 4 tensors, where rank 0 has 6 tensors"),
    ("dtype", "has '0.weight' of shape [12, 6] and dtype float32, where rank 0 has '0.weight' "
              "of shape [12, 6] and dtype float64"),
    ("activation", "has layer 0 activation relu, where rank 0 has layer 0 activation tanh")])
def test_mismatched_models_are_refused_on_every_rank(ranks, kind, expected):  # noqa: F811
    for error, unchanged in ranks.run(mismatched_model, kind):
        assert error is not None and "the model differs between ranks: rank 1 has" in error
        assert expected in error, error
        assert unchanged


def mismatched_fit_arguments():
    model, _ = replica(torch.float64)
    trainer = make_trainer("process_group", model, {"lr": 0.1}, "mse")
    x, y = batch(0, "mse", torch.float64, rows=20)
    batch_size = 4 + dist.get_rank()
    fit_error = outcome(lambda: trainer.fit(x, y, batch_size=batch_size, progress=False))
    generator_error = outcome(lambda: trainer.fit(x, y, generator=torch.Generator(),
                                                  progress=False))
    bad_rank = dist.get_rank() == 1
    evaluate_error = outcome(lambda: trainer.evaluate(x[:, :3] if bad_rank else x, y))
    step_error = outcome(lambda: trainer.step(x[:, :3] if bad_rank else x, y))
    return fit_error, generator_error, evaluate_error, step_error, trainer.steps


def test_mismatched_or_bad_arguments_stop_every_rank(ranks):  # noqa: F811
    results = ranks.run(mismatched_fit_arguments)
    for rank, (fit, generator, evaluate, step, steps) in enumerate(results):
        assert "rank 1 was called with batch_size 5 but rank 0 with 4" in fit, fit
        assert "pass seed (and start_epoch), not a generator" in generator, generator
        if rank == 1:  # its own error
            assert "input has 3 features" in evaluate and "input has 3 features" in step
        else:
            assert "rank 1 refused the call" in evaluate, evaluate
            assert "1 other rank stopped with an error" in step, step
        assert steps == 0


def raising_callback():
    """Rank 1's progress callback raises the first time it runs: both ranks stop at that step."""
    model, _ = replica(torch.float64)
    trainer = make_trainer("ddp", model, {"lr": 0.1}, "mse")
    x, y = batch(0, "mse", torch.float64, rows=64)
    calls = []

    def progress(epoch, step, steps, loss):
        calls.append(epoch * steps + step)  # the steps taken so far
        if dist.get_rank() == 1 and len(calls) == 1:
            raise KeyError("stop here")

    error = outcome(lambda: trainer.fit(x, y, epochs=2, batch_size=2, progress=progress))
    return error, trainer.steps, [p.detach().clone() for p in model.parameters()], calls[:1]


def test_an_error_on_one_rank_inside_fit_stops_every_rank_at_the_same_step(ranks):  # noqa: F811
    (error0, steps0, params0, _), (error1, steps1, params1, first_call) = ranks.run(
        raising_callback)
    assert error1.startswith("KeyError") and "other rank stopped" in error0, (error0, error1)
    # The callback runs every 50 ms and at the end of each epoch (16 steps: 32 samples per rank,
    # 2 per step), so where it first runs depends on the machine's speed; both ranks stop there.
    assert first_call and 1 <= first_call[0] <= 16, first_call
    assert steps0 == steps1 == first_call[0]
    assert all(torch.equal(p, q) for p, q in zip(params0, params1))


def failing_peer(how):
    """Rank 1 dies (or hangs) after two steps; rank 0's next step must raise in time."""
    model, _ = replica(torch.float64)
    trainer = make_trainer("process_group", model, {"lr": 0.1, "momentum": 0.9}, "mse")
    for step in range(2):
        trainer.step(*batch(step, "mse", torch.float64))
    if dist.get_rank() == 1:
        if how == "dies":
            os._exit(3)
        time.sleep(600)  # hangs: killed by the test
    before = [p.detach().clone() for p in model.parameters()]
    start = time.monotonic()
    error = outcome(lambda: trainer.step(*batch(2, "mse", torch.float64)))
    return (error, time.monotonic() - start, trainer.steps,
            all(torch.equal(p, q) for p, q in zip(before, model.parameters())))


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_dead_or_hung_rank_is_an_error_within_the_timeout(how):
    timeout_s = 4
    world = Ranks(pg_timeout_s=timeout_s)
    try:
        result, _ = world.run(failing_peer, how, errors=True, wait_for=[0], timeout_s=90)
    finally:
        world.close()
    error, seconds, steps, unchanged = result
    assert error is not None and "the gradient all-reduce failed on rank 0 of 2" in error, error
    assert "gloo backend" in error
    assert seconds < timeout_s + 10
    assert steps == 2 and unchanged


def bad_construction():
    model, _ = replica(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    other = dist.new_group([0, 1])
    wrong_group = outcome(lambda: torchext.Trainer(DDP(model), optimizer, process_group=other))
    not_a_group = outcome(lambda: torchext.Trainer(model, optimizer, process_group="gloo"))
    ddp = DDP(model)
    trainer = torchext.Trainer(ddp, optimizer)
    with ddp.no_sync():
        in_no_sync = outcome(lambda: trainer.step(*batch(0, "mse", torch.float64)))
    return wrong_group, not_a_group, in_no_sync, trainer.steps


def test_bad_process_groups_and_no_sync_are_refused(ranks):  # noqa: F811
    for wrong_group, not_a_group, in_no_sync, steps in ranks.run(bad_construction):
        assert wrong_group.startswith("ValueError") and "another process group" in wrong_group
        assert not_a_group.startswith("TypeError") and "ProcessGroup" in not_a_group
        assert "no_sync" in in_no_sync and steps == 0
