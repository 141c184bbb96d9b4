"""torchext.linear / linear_backward against torch.nn.functional.linear.

Every expected value is computed by stock PyTorch in the same test. Covers the
seed shapes, leading batch dims, 1-D, empty and non-contiguous inputs, no bias,
every floating dtype, gradcheck/gradgradcheck, opcheck, torch.compile, and the
errors for bad input.
"""

import pytest
import torch
import torch.nn.functional as F

import torchext
from torchext.ops import linear

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (rtol, atol) per dtype; half/bfloat16 as PyTorch's own matmul tests allow.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}

# name -> (input shape, out_features, bias)
CASES = {
    "seed_128x20_to_30": ((128, 20), 30, True),
    "one_dim": ((20,), 30, True),
    "three_dim": ((4, 5, 20), 30, True),
    "four_dim": ((2, 3, 4, 7), 5, True),
    "empty_batch": ((0, 20), 30, True),
    "no_bias": ((128, 20), 30, False),
    "one_dim_no_bias": ((7,), 3, False),
    "odd_sizes": ((33, 257), 129, True),
    "single_feature": ((16, 1), 1, True),
}


def make_args(shape, out_features, has_bias, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    in_features = shape[-1]

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    x = randn(*shape).requires_grad_()
    w = randn(out_features, in_features).requires_grad_()
    b = randn(out_features).requires_grad_() if has_bias else None
    return x, w, b


def clone_args(args):
    return [None if a is None else a.detach().clone().requires_grad_() for a in args]


def assert_forward_backward_match(x, w, b, dtype):
    rtol, atol = TOLERANCES[dtype]
    ref_args = clone_args([x, w, b])
    expected = F.linear(*ref_args)
    actual = linear(x, w, b)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    grad = torch.randn_like(expected, dtype=torch.float64).to(dtype)
    expected.backward(grad)
    actual.backward(grad)
    for mine, ref in zip([x, w, b], ref_args):
        if mine is not None:
            torch.testing.assert_close(mine.grad, ref.grad, rtol=rtol, atol=atol)



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_functional_linear(device, dtype, case):
    shape, out_features, has_bias = CASES[case]
    x, w, b = make_args(shape, out_features, has_bias, dtype, device)
    assert_forward_backward_match(x, w, b, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_contiguous_input_and_weight(device, dtype):
    gen = torch.Generator().manual_seed(1)
    base_x = torch.randn(20, 64, generator=gen, dtype=dtype).to(device)
    base_w = torch.randn(20, 30, generator=gen, dtype=dtype).to(device)
    x = base_x.t().requires_grad_()  # [64, 20], transposed strides
    w = base_w.t().requires_grad_()  # [30, 20], transposed strides
    b = torch.randn(30, generator=gen, dtype=dtype).to(device).requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_forward_backward_match(x, w, b, dtype)
    sliced = torch.randn(8, 6, 40, generator=gen, dtype=dtype).to(device)[:, ::2, ::2]
    fresh_w, fresh_b = clone_args([w, b])  # clone keeps the transposed strides
    assert not fresh_w.is_contiguous()
    assert_forward_backward_match(sliced.requires_grad_(), fresh_w, fresh_b, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_mode_and_no_grad(device):
    x, w, b = make_args((16, 8), 4, True, torch.float32, device)
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))
    with torch.no_grad():
        out = linear(x, w, b)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["three_dim", "one_dim", "no_bias", "empty_batch"])
def test_gradcheck_and_gradgradcheck(device, case):
    shape, out_features, has_bias = CASES[case]
    shape = tuple(min(s, 6) if s else s for s in shape)  # keep the Jacobians small
    args = [a for a in make_args(shape, 4, has_bias, torch.float64, device) if a is not None]
    assert torch.autograd.gradcheck(linear, args)
    assert torch.autograd.gradgradcheck(linear, args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_linear_backward_op(device):
    go, x, w = (torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)
                for s in [(3, 4), (3, 5), (4, 5)])

    def all_grads(go, x, w):
        return torchext.ops.linear_backward(go, x, w, [True, True, True])

    assert torch.autograd.gradcheck(all_grads, (go, x, w))
    assert torch.autograd.gradgradcheck(all_grads, (go, x, w))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_respects_output_mask(device):
    go, x, w = (torch.randn(*s, device=device) for s in [(3, 4), (3, 5), (4, 5)])
    gi, gw, gb = torchext.ops.linear_backward(go, x, w, [False, True, False])
    assert gi is None and gb is None
    torch.testing.assert_close(gw, go.t() @ x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("has_bias", [True, False])
def test_opcheck(device, has_bias):
    x, w, b = make_args((6, 5), 4, has_bias, torch.float32, device)
    torch.library.opcheck(torch.ops.torchext.linear.default, (x, w, b))
    go = torch.randn(6, 4, device=device)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(
            torch.ops.torchext.linear_backward.default, (go, x.detach(), w.detach(), mask)
        )


def test_walkthrough_layers_chapter():
    """Getting Started, "Your First Neural Network", with torchext's Linear."""
    torch.manual_seed(0)
    stock = [torch.nn.Linear(20, 30), torch.nn.Linear(30, 30), torch.nn.Linear(30, 40)]
    torch.manual_seed(0)
    mine = [torchext.nn.Linear(20, 30), torchext.nn.Linear(30, 30), torchext.nn.Linear(30, 40)]
    example_input = torch.randn(128, 20)

    assert mine[0](example_input).shape == (128, 30)
    torch.testing.assert_close(mine[0](example_input), stock[0](example_input))

    def chain(layers):
        output = example_input
        for layer in layers:
            output = layer(output)
        (output.sum() - 12).backward()
        return output

    torch.testing.assert_close(chain(mine), chain(stock))
    for m, s in zip(mine, stock):
        torch.testing.assert_close(m.weight.grad, s.weight.grad)
        torch.testing.assert_close(m.bias.grad, s.bias.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torchext.nn.Linear(20, 30), torch.nn.ReLU(), torchext.nn.Linear(30, 40)
    ).to(device)
    x = torch.randn(128, 20, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    torch.testing.assert_close(compiled_out, eager_out)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the problem.


def test_error_feature_mismatch_names_both_shapes():
    with pytest.raises(RuntimeError, match=r"cannot be multiplied \(128x21 and 20x30\)"):
        linear(torch.randn(128, 21), torch.randn(30, 20), torch.randn(30))
    with pytest.raises(RuntimeError, match=r"cannot be multiplied \(12x21 and 20x30\)"):
        linear(torch.randn(3, 4, 21), torch.randn(30, 20))


def test_error_dtype_mismatch():
    with pytest.raises(RuntimeError, match="weight is Double but input is Float"):
        linear(torch.randn(4, 3), torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="bias is Half but input is Float"):
        linear(torch.randn(4, 3), torch.randn(2, 3), torch.randn(2).half())


def test_error_device_mismatch():
    with pytest.raises(RuntimeError, match="weight is on meta but input is on cpu"):
        torch.ops.torchext.linear(torch.randn(4, 3), torch.randn(2, 3, device="meta"))


def test_error_weight_not_2d():
    with pytest.raises(RuntimeError, match=r"weight must be 2-D .* got shape \[2, 3, 4\]"):
        linear(torch.randn(4, 3), torch.randn(2, 3, 4))


def test_error_bias_wrong_shape():
    with pytest.raises(RuntimeError, match=r"bias must have shape \[2\] .* got \[3\]"):
        linear(torch.randn(4, 3), torch.randn(2, 3), torch.randn(3))


def test_error_integer_input():
    with pytest.raises(RuntimeError, match="expected a floating-point input, got Long"):
        linear(torch.ones(4, 3, dtype=torch.long), torch.randn(2, 3))


def test_error_zero_dim_input():
    with pytest.raises(RuntimeError, match="at least 1 dimension"):
        linear(torch.tensor(1.0), torch.randn(2, 1))


def test_error_backward_grad_output_shape():
    with pytest.raises(RuntimeError, match=r"grad_output must have shape \[4, 2\]"):
        torchext.ops.linear_backward(
            torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3), [True, True, True]
        )


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3, device="meta")),
         "weight is on meta but input is on cpu"),
        ((torch.randn(4, 2, device="meta"), torch.randn(4, 3), torch.randn(2, 3)),
         "grad_output is on meta but input is on cpu"),
        ((torch.randn(4, 2), torch.randn(4, 3, device="meta"), torch.randn(2, 3)),
         "weight is on cpu but input is on meta"),
    ],
    ids=["meta_weight", "meta_grad_output", "meta_input"],
)
def test_error_backward_meta_among_cpu_tensors(args, match):
    with pytest.raises(RuntimeError, match=match):
        torchext.ops.linear_backward(*args, [True, True, True])


def test_error_meta_bias_among_cpu_tensors():
    with pytest.raises(RuntimeError, match="bias is on meta but input is on cpu"):
        linear(torch.randn(4, 3), torch.randn(2, 3), torch.randn(2, device="meta"))
