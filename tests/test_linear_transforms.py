"""torchext.nn.Linear under everything torch users apply to torch.nn.Linear.

Each test builds a torchext.nn.Linear and a torch.nn.Linear with the same parameters and applies
the same PyTorch feature to both: every torch.func transform (jvp, jacfwd, jacrev, hessian, grad,
vjp, vmap with no fallback, per-sample gradients, ensembles through functional_call), forward-mode
AD with dual inputs, dual weights and frozen parameters, autocast (with GradScaler),
torch.jit.script (save and load), torch.export, and the autograd graph's node names. Never a
silent zero: every tangent and gradient is compared with stock's, which is non-zero.
"""

import contextlib
import io
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import torchext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Inputs whose Jacobians stay small: a batch, one sample (1-D), and a transposed batch.
INPUTS = {
    "batch": lambda d: torch.randn(4, 3, dtype=torch.float64, device=d),
    "one_dim": lambda d: torch.randn(3, dtype=torch.float64, device=d),
    "transposed": lambda d: torch.randn(3, 4, dtype=torch.float64, device=d).t(),
}


def twins(device, bias=True, in_features=3, out_features=2):
    torch.manual_seed(0)
    mine = torchext.nn.Linear(in_features, out_features, bias=bias, dtype=torch.float64,
                              device=device)
    stock = nn.Linear(in_features, out_features, bias=bias, dtype=torch.float64, device=device)
    stock.load_state_dict(mine.state_dict())
    return mine, stock


def assert_same_nonzero(a, b):
    torch.testing.assert_close(a, b)
    leaves = torch.utils._pytree.tree_leaves(b)
    assert any(t.abs().sum() > 0 for t in leaves), "the reference itself is zero"


@contextlib.contextmanager
def no_fallback():
    """vmap's per-sample fallback warns; a batching rule must make it unnecessary."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*batching rule.*")
        yield


TRANSFORMS = {
    "jvp": lambda m, x: jvp(m, (x,), (torch.ones_like(x),))[1],
    "jacfwd": lambda m, x: jacfwd(m)(x),
    "jacrev": lambda m, x: jacrev(m)(x),
    "hessian": lambda m, x: hessian(lambda t: m(t).pow(3).sum())(x),
    "vjp": lambda m, x: vjp(m, x)[1](torch.ones_like(m(x)))[0],
    "grad": lambda m, x: grad(lambda t: m(t).pow(2).sum())(x),
    "vmap": lambda m, x: vmap(m)(x) if x.dim() > 1 else vmap(m)(x.unsqueeze(0)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transform_of_input_matches_stock(device, bias, input_kind, transform):
    mine, stock = twins(device, bias)
    x = INPUTS[input_kind](device)
    with no_fallback():
        assert_same_nonzero(TRANSFORMS[transform](mine, x), TRANSFORMS[transform](stock, x))


def _loss(module):
    return lambda params, x: functional_call(module, params, (x,)).pow(2).sum()


PARAM_TRANSFORMS = {
    "grad": lambda f, p, x: grad(f)(p, x),
    "jacrev": lambda f, p, x: jacrev(f)(p, x),
    "jacfwd": lambda f, p, x: jacfwd(f)(p, x),
    "hessian": lambda f, p, x: hessian(f)(p, x),
    "per_sample_grad": lambda f, p, x: vmap(grad(f), in_dims=(None, 0))(p, x),
    "ensemble_grad": lambda f, p, x: vmap(grad(f), in_dims=(0, None))(
        {k: torch.stack([v, 2 * v]) for k, v in p.items()}, x),
    "ensemble_forward": lambda f, p, x: vmap(f, in_dims=(0, None))(
        {k: torch.stack([v, 2 * v]) for k, v in p.items()}, x),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transform", list(PARAM_TRANSFORMS))
def test_transform_of_parameters_matches_stock(device, transform):
    mine, stock = twins(device)
    x = torch.randn(4, 3, dtype=torch.float64, device=device)
    results = []
    for module in (mine, stock):
        params = {k: v.detach() for k, v in module.named_parameters()}
        with no_fallback():
            results.append(PARAM_TRANSFORMS[transform](_loss(module), params, x))
    assert_same_nonzero(*results)


def _tangent(module, x, dual_input, dual_params, frozen=False):
    if frozen:
        module.requires_grad_(False)
    with fwAD.dual_level():
        inp = fwAD.make_dual(x, torch.ones_like(x)) if dual_input else x
        params = {
            k: fwAD.make_dual(v.detach(), torch.full_like(v, 0.5)) if dual_params else v
            for k, v in module.named_parameters()
        }
        out = functional_call(module, params, (inp,))
        primal, tangent = fwAD.unpack_dual(out)
        return primal.detach(), None if tangent is None else tangent.clone()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dual_input,dual_params,frozen",
    [(True, False, False), (False, True, False), (True, True, False), (True, False, True),
     (False, True, True)],
    ids=["dual_input", "dual_weights", "both", "dual_input_frozen", "dual_weights_frozen"],
)
def test_forward_mode_ad_matches_stock(device, dual_input, dual_params, frozen):
    mine, stock = twins(device)
    x = torch.randn(4, 3, dtype=torch.float64, device=device, requires_grad=not frozen)
    ours = _tangent(mine, x, dual_input, dual_params, frozen)
    theirs = _tangent(stock, x, dual_input, dual_params, frozen)
    assert ours[1] is not None
    torch.testing.assert_close(ours[0], theirs[0])
    assert_same_nonzero(ours[1], theirs[1])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_forward_and_backward_ad_of_both_ops(device):
    x = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    go = torch.randn(3, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(torchext.ops.linear, (x, w, b), check_forward_ad=True)
    assert torch.autograd.gradcheck(
        lambda g, x, w: torchext.ops.linear_backward(g, x, w, [True, True, True]),
        (go, x, w), check_forward_ad=True,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_grad_fn_named_like_torchs_nodes(device):
    mine, _ = twins(device)
    x = torch.randn(4, 3, dtype=torch.float64, device=device, requires_grad=True)
    out = mine(x)
    assert out.grad_fn.name() == "LinearBackward0"
    assert "grad_fn=<LinearBackward0>" in repr(out)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert gx.grad_fn.name() == "LinearBackwardBackward0"


# ---------------------------------------------------------------------------
# Autocast: aten::linear's lower-precision policy.


def _autocast_devices():
    return [("cpu", torch.bfloat16), ("cpu", torch.float16)] + (
        [("cuda", torch.float16), ("cuda", torch.bfloat16)] if torch.cuda.is_available() else []
    )


@pytest.mark.parametrize("device,dtype", _autocast_devices(), ids=str)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_autocast_matches_functional_linear(device, dtype, input_dtype):
    torch.manual_seed(0)
    mine = torchext.nn.Linear(8, 5, device=device)
    stock = nn.Linear(8, 5, device=device)
    stock.load_state_dict(mine.state_dict())
    x = torch.randn(6, 8, device=device).to(input_dtype)
    results = []
    for module in (mine, stock):
        module.zero_grad()
        xi = x.clone().requires_grad_()
        try:
            with torch.autocast(device, dtype=dtype):
                out = module(xi)
            out.float().sum().backward()
        except RuntimeError as exc:  # float64 input into a float32 layer: both refuse
            results.append(type(exc))
            continue
        results.append((out, xi.grad, module.weight.grad, module.bias.grad))
    if not isinstance(results[1], tuple):
        assert results[0] is results[1]
        return
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)
    assert results[0][0].dtype == dtype


def test_grad_scaler_under_autocast_trains_like_stock():
    runs = []
    for linear in (torchext.nn.Linear, nn.Linear):
        torch.manual_seed(0)
        model = nn.Sequential(linear(8, 16), nn.ReLU(), linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(5, 8, generator=gen), torch.randn(5, 2, generator=gen)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append([p.detach() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------
# TorchScript, torch.export, and being an nn.Linear.


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_jit_script_runs_saves_loads_with_the_same_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(torchext.nn.Linear(4, 8), nn.ReLU(), torchext.nn.MLP([8, 6, 3]))
    scripted = torch.jit.script(model)
    x = torch.randn(5, 4)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    assert "torchext::linear" in str(scripted.inlined_graph)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    loaded(xg).sum().backward()
    xs = x.clone().requires_grad_()
    model(xs).sum().backward()
    torch.testing.assert_close(xg.grad, xs.grad)


def test_export_keeps_the_op_and_the_numbers():
    torch.manual_seed(0)
    model = torchext.nn.MLP([4, 8, 3])
    x = torch.randn(5, 4)
    exported = torch.export.export(model, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert torch.ops.torchext.linear.default in targets
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)


def test_is_an_nn_linear():
    torch.manual_seed(0)
    model = nn.Sequential(torchext.nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(found) == 2 and isinstance(found[0], torchext.nn.Linear)
    for m in found:  # a typical init loop reaches torchext's layer too
        nn.init.zeros_(m.bias)
    assert not model[0].bias.any()
    stock = nn.Linear(4, 8)
    assert repr(model[0]) == repr(stock) and model[0].extra_repr() == stock.extra_repr()
    assert model[0].__constants__ == stock.__constants__
