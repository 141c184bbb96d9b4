"""Helpers shared by the Trainer tests: the stock reference step, and state snapshots."""

import copy

import torch


def stock_step(model, opt, loss_fn, x, y):
    """One step of the hand-written stock loop; returns the loss before the update."""
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def stock_mixed_step(model, opt, loss_fn, x, y, dtype, scaler=None):
    """The stock loop's step under ``torch.autocast`` (and ``scaler``, a GradScaler, if given)."""
    opt.zero_grad()
    with torch.autocast(x.device.type, dtype=dtype):
        loss = loss_fn(model(x), y)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss.detach()


def snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def assert_unchanged(model, opt, before):
    """The model and optimizer state are exactly those of ``snapshot(model, opt)``."""
    model_state, opt_state = before
    for key, value in model.state_dict().items():
        assert torch.equal(value, model_state[key]), key
    now = opt.state_dict()
    assert now["param_groups"] == opt_state["param_groups"]
    assert now["state"].keys() == opt_state["state"].keys()
    for i, state in now["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_state["state"][i]["momentum_buffer"])
