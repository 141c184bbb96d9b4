"""The torchext ops over every input layout: opcheck and torch.compile against eager.

The fake kernels (torchext/_fake.py) must give exactly the metadata the real kernels give —
sizes, strides, dtype, device — or torch.compile's inductor code reads its buffers with the wrong
strides. ``torch.library.opcheck`` (schema, autograd registration, fake tensors, AOT dispatch with
dynamic shapes) runs over every layout and floating dtype; ``torch.compile`` (inductor, static and
``dynamic=True``, ``fullgraph=True``) runs forward and backward over every layout against eager
(float32: inductor compiles are slow on small machines, and the dtype matrix is opcheck's).
"""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import torchext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
IN, OUT = 5, 4


def _randn(*shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)


# name -> input of in_features IN, in that layout (a leaf: requires_grad is set by the tests)
LAYOUTS = {
    "contiguous": lambda **kw: _randn(6, IN, **kw),
    "transposed": lambda **kw: _randn(IN, 6, **kw).t(),
    "permuted_nd": lambda **kw: _randn(2, IN, 3, **kw).permute(0, 2, 1),
    "expanded": lambda **kw: _randn(1, IN, **kw).expand(6, IN),
    "empty": lambda **kw: _randn(0, IN, **kw),
    "one_dim": lambda **kw: _randn(IN, **kw),
}


def _weight(dtype, device, transposed=False):
    if transposed:
        return _randn(IN, OUT, dtype=dtype, device=device, seed=1).t()
    return _randn(OUT, IN, dtype=dtype, device=device, seed=1)


def test_layouts_are_what_they_say():
    x = {name: make(dtype=torch.float32, device="cpu") for name, make in LAYOUTS.items()}
    assert not x["transposed"].is_contiguous() and not x["permuted_nd"].is_contiguous()
    assert x["expanded"].stride(0) == 0 and x["empty"].numel() == 0 and x["one_dim"].dim() == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_opcheck_linear(device, dtype, layout):
    x = LAYOUTS[layout](dtype=dtype, device=device).requires_grad_()
    w = _weight(dtype, device, transposed=layout == "transposed").requires_grad_()
    b = _randn(OUT, dtype=dtype, device=device, seed=2).requires_grad_()
    torch.library.opcheck(torch.ops.torchext.linear.default, (x, w, b))
    torch.library.opcheck(torch.ops.torchext.linear.default, (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_opcheck_linear_backward(device, dtype, layout):
    x = LAYOUTS[layout](dtype=dtype, device=device)
    w = _weight(dtype, device, transposed=layout == "transposed")
    grad_output = _randn(*x.shape[:-1], OUT, dtype=dtype, device=device, seed=3)
    if layout == "transposed":  # a transposed gradient too
        grad_output = grad_output.t().contiguous().t()
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(
            torch.ops.torchext.linear_backward.default, (grad_output, x, w, mask)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fake_kernels_give_the_real_metadata(device, layout):
    # The contract opcheck checks, stated directly: same sizes, strides, dtype and device.
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = LAYOUTS[layout](dtype=torch.float32, device=device)
    w = _weight(torch.float32, device, transposed=layout == "transposed")
    b = _randn(OUT, dtype=torch.float32, device=device)
    go = _randn(*x.shape[:-1], OUT, dtype=torch.float32, device=device)
    real = [torch.ops.torchext.linear(x, w, b),
            *torch.ops.torchext.linear_backward(go, x, w, [True, True, True])]
    with FakeTensorMode() as mode:
        fx, fw, fb, fgo = (mode.from_tensor(t) for t in (x, w, b, go))
        fake = [torch.ops.torchext.linear(fx, fw, fb),
                *torch.ops.torchext.linear_backward(fgo, fx, fw, [True, True, True])]
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype, r.device) == (f.shape, f.stride(), f.dtype, f.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compile_inductor_forward_backward_match_eager(device, dynamic, layout):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = torchext.nn.Linear(IN, OUT, device=device)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(layer, backend=counter, fullgraph=True, dynamic=dynamic)
    results = []
    for run in (layer, compiled):
        layer.zero_grad()
        x = LAYOUTS[layout](dtype=torch.float32, device=device).requires_grad_()
        out = run(x)
        (out * torch.arange(out.numel(), device=device).view(out.shape)).sum().backward()
        results.append([out, x.grad, layer.weight.grad, layer.bias.grad])
    assert counter.frame_count == 1  # compiled, in one graph
    for eager, compiled_value in zip(*results):
        torch.testing.assert_close(compiled_value, eager)
    # and both equal stock nn.Linear
    x = LAYOUTS[layout](dtype=torch.float32, device=device)
    torch.testing.assert_close(results[0][0], F.linear(x, layer.weight, layer.bias))
