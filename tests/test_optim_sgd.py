"""torchext.optim.SGD against torch.optim.SGD, run side by side in each test.

Every test builds the same parameters twice, drives torch.optim.SGD and torchext.optim.SGD with
identical gradients, and compares parameters and momentum buffers: the full hyper-parameter
matrix, missing gradients, state_dict exchange in both directions, schedulers, GradScaler, hooks,
closures and param groups.
"""

import copy
import io
import re

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import torchext

TOL = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
}
# A matrix, a vector, an empty tensor, and a vector whose gradient first appears at step 5.
SHAPES = [(3, 4), (4,), (0, 2), (5,)]


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def dtypes(device):
    reduced = [torch.float16, torch.bfloat16] if device == "cuda" else []
    return [torch.float32, torch.float64] + reduced


def make_params(dtype=torch.float64, device="cpu", shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
        for s in shapes
    ]


def twins(params):
    """A deep copy of params, for the stock optimizer."""
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(step, *param_lists, seed=1):
    """The same gradients on each list; some are None at some steps."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    for i, p in enumerate(param_lists[0]):
        missing = (i == 3 and step < 5) or (i == 1 and step in (7, 12))
        g = None if missing else torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for params in param_lists:
            params[i].grad = None if g is None else g.to(params[i].device, params[i].dtype)


def assert_same(ours, stock, params, stock_params, dtype):
    tol = TOL[dtype]
    for p, q in zip(params, stock_params):
        torch.testing.assert_close(p.detach(), q.detach(), **tol)
    for p, q in zip(params, stock_params):
        a, b = ours.state.get(p, {}), stock.state.get(q, {})
        assert a.keys() == b.keys()
        if "momentum_buffer" in a:
            torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], **tol)


def run_both(ours, stock, params, stock_params, steps, first_step=0):
    for step in range(first_step, first_step + steps):
        set_grads(step, params, stock_params)
        ours.step()
        stock.step()


VALID = [
    (0.0, 0.0, False),
    (0.0, 0.5, False),
    (0.9, 0.0, False),
    (0.9, 0.5, False),
    (0.9, 0.0, True),
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("momentum,dampening,nesterov", VALID)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_matches_torch(device, momentum, dampening, nesterov, weight_decay, maximize, tensor_lr):
    for dtype in dtypes(device):
        params = make_params(dtype, device)
        stock_params = twins(params)
        lr = torch.tensor(0.01) if tensor_lr else 0.01
        kwargs = {
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        ours = torchext.optim.SGD(params, lr=lr, **kwargs)
        stock = torch.optim.SGD(stock_params, lr=copy.deepcopy(lr), **kwargs)
        run_both(ours, stock, params, stock_params, steps=20)
        assert_same(ours, stock, params, stock_params, dtype)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -0.1},
        {"lr": 0.1, "momentum": -0.5},
        {"lr": 0.1, "weight_decay": -1e-3},
        {"lr": 0.1, "nesterov": True},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        {"lr": torch.tensor([0.1, 0.2])},
    ],
)
def test_bad_hyper_parameters_raise_torchs_message(kwargs):
    with pytest.raises(ValueError) as stock_error:
        torch.optim.SGD(make_params(), **kwargs)
    with pytest.raises(ValueError, match=f"^{re.escape(str(stock_error.value))}$"):
        torchext.optim.SGD(make_params(), **kwargs)


def test_walk_through():
    def run(optim_class):
        var_1 = torch.tensor(3.0, requires_grad=True)
        var_2 = torch.tensor(4.0, requires_grad=True)
        (var_1 * var_2 - 7).backward()
        optimizer = optim_class([var_1, var_2], lr=1e-2, momentum=0.9)
        optimizer.step()
        optimizer.zero_grad()
        assert var_1.grad is None and var_2.grad is None
        return var_1, var_2, [s["momentum_buffer"] for s in optimizer.state.values()]

    ours, stock = run(torchext.optim.SGD), run(torch.optim.SGD)
    assert ours[0].item() == stock[0].item() == pytest.approx(2.96)
    assert ours[1].item() == stock[1].item() == pytest.approx(3.97)
    assert all(torch.equal(a, b) for a, b in zip(ours[2], stock[2]))


def _through_file(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("via_file", [False, True])
def test_state_dict_round_trip(direction, via_file):
    kwargs = {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}
    first_params = make_params()
    classes = (torch.optim.SGD, torchext.optim.SGD)
    if direction == "ours_to_torch":
        classes = classes[::-1]
    first = classes[0](first_params, **kwargs)
    for step in range(6):
        set_grads(step, first_params)
        first.step()
    saved = first.state_dict()
    assert saved["param_groups"][0].keys() == (
        torch.optim.SGD(make_params()).state_dict()["param_groups"][0].keys()
    )
    # The second optimizer takes over from the first: same parameters, loaded state.
    second_params = twins(first_params)
    second = classes[1](second_params, lr=0.5)  # hyper-parameters come from the state_dict
    second.load_state_dict(_through_file(saved) if via_file else copy.deepcopy(saved))
    assert second.param_groups[0]["lr"] == 0.01
    run_both(first, second, first_params, second_params, steps=6, first_step=6)
    ours, stock = (second, first) if direction == "torch_to_ours" else (first, second)
    ours_p, stock_p = (
        (second_params, first_params)
        if direction == "torch_to_ours"
        else (first_params, second_params)
    )
    assert_same(ours, stock, ours_p, stock_p, torch.float64)


def test_load_casts_buffers_to_param_dtype():
    params = make_params(torch.float32)
    stock = torch.optim.SGD(twins(params), lr=0.1, momentum=0.9)
    set_grads(0, stock.param_groups[0]["params"])
    stock.step()
    saved = stock.state_dict()
    for s in saved["state"].values():
        s["momentum_buffer"] = s["momentum_buffer"].double()
    ours = torchext.optim.SGD(params, lr=0.1, momentum=0.9)
    ours.load_state_dict(saved)
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in ours.state.values())


def test_scheduler_and_param_groups():
    params = make_params()
    stock_params = twins(params)

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:3], "lr": 0.05, "momentum": 0.0}]

    ours = torchext.optim.SGD(groups(params), lr=0.01, momentum=0.9)
    stock = torch.optim.SGD(groups(stock_params), lr=0.01, momentum=0.9)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ours, stock)]
    for step in range(12):
        if step == 6:  # the last parameter joins in a group of its own
            ours.add_param_group(
                {"params": params[3:], "lr": 0.2, "nesterov": True, "momentum": 0.5}
            )
            stock.add_param_group(
                {"params": stock_params[3:], "lr": 0.2, "nesterov": True, "momentum": 0.5}
            )
        set_grads(step, params, stock_params)
        ours.step()
        stock.step()
        for s in scheds:
            s.step()
    assert ours.param_groups[0]["lr"] == stock.param_groups[0]["lr"] == 0.01 * 0.5**4
    assert_same(ours, stock, params, stock_params, torch.float64)


@pytest.mark.parametrize("inf_steps", [(0,), (3,), (0, 4)])
def test_grad_scaler_skips_inf_steps(inf_steps):
    results = []
    for optim_class in (torchext.optim.SGD, torch.optim.SGD):
        params = make_params(torch.float32, shapes=[(3, 4), (4,)])
        optimizer = optim_class(params, lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        history = []
        for step in range(6):
            x = torch.full((4,), float("inf") if step in inf_steps else 1.0 + step)
            loss = (params[0] @ x).sum() + (params[1] * x).sum()
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            before = [p.detach().clone() for p in params]
            scaler.step(optimizer)
            scaler.update()
            if step in inf_steps:  # skipped: parameters untouched, no state created on step 0
                assert all(torch.equal(p, b) for p, b in zip(params, before))
                if step == 0:
                    assert len(optimizer.state) == 0
            # Stepped gradients end unscaled either way (stock: unscale_; ours: the kernel).
            grads = [] if step in inf_steps else [p.grad.clone() for p in params]
            history.append(([p.detach().clone() for p in params] + grads, scaler.get_scale()))
        buffers = [optimizer.state[p]["momentum_buffer"] for p in params]
        results.append((history, buffers))
    (ours_history, ours_buffers), (stock_history, stock_buffers) = results
    for (ours_params, ours_scale), (stock_params, stock_scale) in zip(ours_history, stock_history):
        assert ours_scale == stock_scale
        for a, b in zip(ours_params, stock_params):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
    for a, b in zip(ours_buffers, stock_buffers):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_hooks_closure_and_zero_grad_to_zero():
    params = make_params()
    stock_params = twins(params)
    ours = torchext.optim.SGD(params, lr=0.01, momentum=0.9)
    stock = torch.optim.SGD(stock_params, lr=0.01, momentum=0.9)
    calls = []
    ours.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("pre", opt)))
    ours.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", opt)))
    for _ in range(4):

        def closure(ps=params):
            loss = sum((p * p).sum() for p in ps)
            loss.backward()
            return loss

        loss = ours.step(closure)
        stock_loss = stock.step(lambda ps=stock_params: closure(ps))
        assert loss.item() == pytest.approx(stock_loss.item(), rel=1e-12)
        ours.zero_grad(set_to_none=False)
        stock.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in params)
    assert calls == [("pre", ours), ("post", ours)] * 4
    ours.step()  # zero gradients: momentum still moves the parameters
    stock.step()
    assert_same(ours, stock, params, stock_params, torch.float64)


def test_hooks_run_once_from_every_kind_of_step():
    # step() skips torch's hook wrapper when nothing is registered, and must still run every hook
    # exactly once: its own, global ones, and for a subclass whose step calls super().step().
    class Sub(torchext.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    params = make_params()
    set_grads(0, params)
    for cls in (torchext.optim.SGD, Sub):
        opt = cls(params, lr=0.01, momentum=0.9)
        calls = []
        opt.register_step_pre_hook(lambda *args, calls=calls: calls.append("pre"))
        handle = register_optimizer_step_post_hook(
            lambda *args, calls=calls: calls.append("global post")
        )
        try:
            opt.step()
        finally:
            handle.remove()
        opt.step()
        assert calls == ["pre", "global post", "pre"]


def test_profiler_sees_the_step():
    params = make_params()
    set_grads(0, params)
    opt = torchext.optim.SGD(params, lr=0.01, momentum=0.9)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#SGD.step" in {e.name for e in prof.events()}


def test_complex_params():
    params = [torch.randn(3, 2, dtype=torch.complex128, requires_grad=True)]
    stock_params = twins(params)
    ours = torchext.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-2)
    stock = torch.optim.SGD(stock_params, lr=0.01, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        g = torch.randn(3, 2, dtype=torch.complex128)
        params[0].grad, stock_params[0].grad = g.clone(), g.clone()
        ours.step()
        stock.step()
    torch.testing.assert_close(params[0].detach(), stock_params[0].detach(), rtol=1e-12, atol=1e-12)
    assert ours.state[params[0]]["momentum_buffer"].dtype == torch.complex128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_params_on_several_devices():
    params = make_params(torch.float32, "cpu")[:2] + make_params(torch.float32, "cuda")[2:]
    stock_params = twins(params)
    ours = torchext.optim.SGD(params, lr=0.01, momentum=0.9)
    stock = torch.optim.SGD(stock_params, lr=0.01, momentum=0.9)
    run_both(ours, stock, params, stock_params, steps=8)
    assert_same(ours, stock, params, stock_params, torch.float32)
