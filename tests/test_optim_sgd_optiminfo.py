"""torchext.optim.SGD driven by PyTorch's own optimizer test database.

``torch.testing._internal.common_optimizers`` describes torch.optim.SGD for torch's test suite:
its configurations (``optim_inputs_func``, expanded with every implementation flag it supports:
``foreach``, ``differentiable``, ``fused``), the inputs it must refuse, the LR schedulers it must
work with and its sparse-gradient settings. Here torchext's class is swapped in and
``torch.optim.SGD`` runs the same configuration on twin parameters in the same test; parameters,
momentum buffers and state dicts must be equal bit for bit (errors: same type and message).

The reference is torch's *default* path, which torchext reproduces whatever the configuration's
flags, so the stock twin runs without ``fused``: torch's own ``fused=True`` CPU kernel is wrong
for float16/bfloat16 tensors of 16 elements or more (upstream pytorch issue 191763), and it
fails with a TypeError when a parameter gets its first gradient after others already have
momentum buffers (as the last parameter here does). What ``fused=True`` refuses is tested
against torch's fused path separately.
"""

import copy
import re
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import (
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import torchext

SGD_INFO = next(info for info in optim_db if info.optim_cls is torch.optim.SGD)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# A matrix, a vector with a tail after torch's 32-element vector blocks, an empty tensor, and a
# vector whose gradient appears only from step 2.
SHAPES = [(3, 4), (37,), (0, 2), (70,)]
STEPS = 5


def _configs(device):
    inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, None, SGD_INFO)
    return [pytest.param(i.kwargs, id=f"{i.desc}-{_flags(i.kwargs)}") for i in inputs]


def _flags(kwargs):
    on = [f for f in ("foreach", "differentiable", "fused") if kwargs.get(f)]
    return "+".join(on) or "no-flags"


def _params(device, dtype, differentiable):
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in SHAPES]
    if differentiable:  # torch's differentiable step updates non-leaf tensors in place
        sources = [t.requires_grad_() for t in leaves]
        return sources, [t.clone() for t in sources]
    return None, [t.requires_grad_() for t in leaves]


def _grads(step, params):
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
        p.grad = None if (i == 3 and step < 2) else g


def _reference_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k != "fused"}  # see the module docstring


def _run(optim_class, kwargs, device, dtype, differentiable):
    """STEPS steps; returns (params, optimizer, error) — error is (type, message) or None."""
    sources, params = _params(device, dtype, differentiable)
    try:
        opt = optim_class(params, **copy.deepcopy(kwargs))
        for step in range(STEPS):
            _grads(step, params)
            opt.step()
    except Exception as exc:  # noqa: BLE001 - compared with the stock outcome below
        return params, None, (type(exc), str(exc))
    if differentiable:  # the update's graph: gradients of the new params w.r.t. the old ones
        total = sum((p.double() ** 2).sum() for p in params)
        return torch.autograd.grad(total, sources, allow_unused=True), opt, None
    return params, opt, None


def _assert_equal(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.detach(), b.detach()), (a - b).abs().max()


def _assert_same_state(ours, stock, ignore=()):
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    strip = [[{k: v for k, v in g.items() if k not in ignore} for g in sd["param_groups"]]
             for sd in (ours_sd, stock_sd)]
    assert strip[0] == strip[1]
    assert ours_sd["state"].keys() == stock_sd["state"].keys()
    for key, state in ours_sd["state"].items():
        assert state.keys() == stock_sd["state"][key].keys()
        _assert_equal(state["momentum_buffer"], stock_sd["state"][key]["momentum_buffer"])


# torch's differentiable step reads .grad of non-leaf tensors, and says so.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", _configs("cpu"))
def test_every_configuration_matches_stock(device, dtype, kwargs):
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    differentiable = kwargs.get("differentiable", False)
    reference = _reference_kwargs(kwargs)
    ours = _run(torchext.optim.SGD, kwargs, device, dtype, differentiable)
    stock = _run(torch.optim.SGD, reference, device, dtype, differentiable)
    assert ours[2] == stock[2]  # the same error, or none
    if ours[2] is not None:
        return
    for a, b in zip(ours[0], stock[0]):
        _assert_equal(a, b)
    if not differentiable:
        _assert_same_state(ours[1], stock[1], ignore=set(kwargs) - set(reference))


def _error_inputs(device):
    inputs = SGD_INFO.optim_error_inputs_func(device, torch.float32)
    return [pytest.param(e, id=e.optimizer_error_input.desc) for e in inputs]


@pytest.mark.parametrize("error_input", _error_inputs("cpu"))
def test_error_inputs_refused_as_stock(error_input):
    given = error_input.optimizer_error_input
    outcomes = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        params = given.params
        if params is None:
            params = [torch.nn.Parameter(torch.randn(2, 2))]
        if error_input.error_type is UserWarning:
            with pytest.warns(UserWarning, match=error_input.error_regex) as record:
                cls(params, **given.kwargs)
            outcomes.append([str(w.message) for w in record])
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex) as info:
                cls(params, **given.kwargs)
            outcomes.append(str(info.value))
    assert outcomes[0] == outcomes[1]


def _schedulers():
    return [pytest.param(s, id="+".join(type(f(torch.optim.SGD([torch.zeros(1,
            requires_grad=True)]))).__name__ for f in s)) for s in SGD_INFO.scheduler_inputs]


@pytest.mark.parametrize("schedulers", _schedulers())
def test_scheduler_inputs_match_stock(schedulers):
    results = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        _, params = _params("cpu", torch.float64, False)
        opt = cls(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
        scheds = [make(opt) for make in schedulers]
        lrs = []
        for step in range(12):
            _grads(step, params)
            opt.step()
            loss = sum(float((p.detach() ** 2).sum()) for p in params)
            for s in scheds:
                if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    s.step(loss)
                else:
                    s.step()
            lrs.append(opt.param_groups[0]["lr"])
        results.append((params, lrs, opt))
    (ours, ours_lrs, ours_opt), (stock, stock_lrs, stock_opt) = results
    assert ours_lrs == stock_lrs
    for a, b in zip(ours, stock):
        _assert_equal(a, b)
    _assert_same_state(ours_opt, stock_opt)


def _sparse_configs():
    base, _ = SGD_INFO.metadata_for_sparse
    return [
        pytest.param(dict(base), id="database-sparse-settings"),
        pytest.param(dict(base, momentum=0.9), id="momentum"),
        pytest.param(dict(base, momentum=0.9, nesterov=True, maximize=True), id="nesterov"),
        pytest.param(dict(base, momentum=0.9, dampening=0.3, foreach=True), id="foreach"),
    ]


@pytest.mark.parametrize("kwargs", _sparse_configs())
def test_sparse_gradients_match_stock(kwargs):
    _, schedulers = SGD_INFO.metadata_for_sparse
    results = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
        dense = torch.nn.Linear(3, 2, dtype=torch.float64)
        opt = cls(list(embedding.parameters()) + list(dense.parameters()), **kwargs)
        scheds = [make(opt) for make in schedulers]
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            opt.zero_grad()
            index = torch.randint(0, 10, (5,), generator=gen)
            dense(embedding(index)).pow(2).sum().backward()
            opt.step()
            for s in scheds:
                s.step()
        results.append((embedding.weight, dense.weight, opt))
    for a, b in zip(results[0][:2], results[1][:2]):
        _assert_equal(a, b)
    ours_state = results[0][2].state_dict()["state"]
    stock_state = results[1][2].state_dict()["state"]
    assert ours_state.keys() == stock_state.keys()
    for key in ours_state:
        a, b = ours_state[key].get("momentum_buffer"), stock_state[key].get("momentum_buffer")
        if a is not None and a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        _assert_equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [{"fused": True}, {"momentum": 0.9, "weight_decay": 1e-2}], ids=["fused", "decay"]
)
def test_sparse_gradient_refusals_are_stocks_and_change_nothing(kwargs):
    # torch refuses sparse gradients with fused=True, and with weight decay; torchext refuses
    # them with the same messages before writing anything (a dense group is stepped too).
    messages = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        embedding = torch.nn.Embedding(10, 3, sparse=True)
        dense = torch.nn.Linear(3, 2)
        opt = cls([{"params": dense.parameters()}, {"params": embedding.parameters()}], lr=0.1,
                  **kwargs)
        dense(embedding(torch.tensor([1, 2]))).sum().backward()
        before = [t.detach().clone() for t in (embedding.weight, dense.weight, dense.bias)]
        with pytest.raises(RuntimeError) as info:
            opt.step()
        messages.append(str(info.value))
        if cls is torchext.optim.SGD:
            after = (embedding.weight, dense.weight, dense.bias)
            assert all(torch.equal(a, b) for a, b in zip(after, before))
            assert len(opt.state) == 0
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    "make_param",
    [
        pytest.param(lambda: torch.zeros(3, dtype=torch.complex64), id="complex"),
        pytest.param(lambda: torch.zeros(3, device="meta"), id="meta-device"),
    ],
)
def test_fused_true_refuses_what_stock_refuses(make_param):
    messages = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        p = make_param().requires_grad_()
        p.grad = torch.zeros_like(p)
        opt = cls([p], lr=0.1, fused=True)
        with pytest.raises(RuntimeError, match="`fused=True` requires") as info:
            opt.step()
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"fused": True, "differentiable": True}, "`fused` does not support `differentiable`"),
        ({"fused": True, "foreach": True}, "`fused` and `foreach` cannot be `True` together."),
    ],
)
def test_incompatible_flags_refused_as_stock(kwargs, message):
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
            cls([torch.zeros(2, requires_grad=True)], lr=0.1, **kwargs)


def test_signature_and_defaults_are_stocks():
    import inspect

    ours = inspect.signature(torchext.optim.SGD.__init__)
    stock = inspect.signature(torch.optim.SGD.__init__)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in stock.parameters.values()
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = [torch.zeros(2, requires_grad=True)]
        assert torchext.optim.SGD(p).defaults == torch.optim.SGD(p).defaults
