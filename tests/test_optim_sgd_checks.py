"""torchext.optim.SGD checks a whole step before it writes anything; dtypes bit for bit.

A bad gradient, momentum buffer or hyper-parameter in any parameter group raises a clear error
that names the group and the parameter, and leaves every group's parameters, gradients and
optimizer state exactly as they were — where torch.optim.SGD would have updated the groups
before the bad one. And the step is torch's default path bit for bit in every floating dtype,
also with torch.amp.GradScaler and a scale that is not a power of two.
"""

import pytest
import torch

import torchext


def _groups(second_dtype=torch.float64):
    # second_dtype float64: the second group needs two fused calls (the step is planned in Python
    # and its calls checked together in C++); float32: one call per group (the whole step is read,
    # checked and made in one C++ call, _C.sgd_step_).
    gen = torch.Generator().manual_seed(0)
    first = [torch.randn(3, 4, generator=gen, requires_grad=True),
             torch.randn(5, generator=gen, requires_grad=True)]
    second = [torch.randn(2, 2, generator=gen, requires_grad=True),
              torch.randn(6, generator=gen, dtype=second_dtype).requires_grad_()]
    for p in first + second:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    return first, second


def _spoil_grad_shape(opt, second):
    second[0].grad.data = torch.randn(5)  # .data bypasses the .grad setter's checks


def _spoil_buffer_shape(opt, second):
    opt.state[second[0]]["momentum_buffer"] = torch.zeros(7)


def _spoil_buffer_type(opt, second):
    opt.state[second[0]]["momentum_buffer"] = [1.0, 2.0]


def _spoil_buffer_dtype(opt, second):
    opt.state[second[0]]["momentum_buffer"] = torch.zeros(2, 2, dtype=torch.float64)


def _spoil_lr(opt, second):
    opt.param_groups[1]["lr"] = "0.1"


def _spoil_tensor_lr(opt, second):
    opt.param_groups[1]["lr"] = torch.tensor([0.1, 0.2])


def _spoil_momentum(opt, second):
    opt.param_groups[1]["momentum"] = None


def _spoil_half_alpha(opt, second):
    second[1].data = second[1].data.half()
    second[1].grad = torch.zeros(6, dtype=torch.float16)
    opt.state.pop(second[1], None)
    opt.param_groups[1]["lr"] = 1e6  # -lr cannot be converted to float16, as torch refuses


def _spoil_expanded_param(opt, second):
    second[0].data = torch.zeros(1, 2).expand(2, 2)


SPOILERS = {
    "grad_shape": (_spoil_grad_shape, r"param_groups\[1\]\['params'\]\[0\]: its gradient is"),
    "buffer_shape": (_spoil_buffer_shape, r"\[0\]: its momentum buffer is torch.float32 \[7\]"),
    "buffer_type": (_spoil_buffer_type, r"\[0\]: its momentum buffer is a list"),
    "buffer_dtype": (_spoil_buffer_dtype, r"momentum buffer is torch.float64 \[2, 2\]"),
    "lr_type": (_spoil_lr, r"param_groups\[1\]\['lr'\] must be a real number"),
    "tensor_lr": (_spoil_tensor_lr, r"param_groups\[1\]\['lr'\]: Tensor lr must be 1-element"),
    "momentum_type": (_spoil_momentum, r"param_groups\[1\]\['momentum'\] must be a real number"),
    "half_overflow": (_spoil_half_alpha, "cannot be converted to type at::Half without overflow"),
    "expanded_param": (_spoil_expanded_param, "share memory"),
}


@pytest.mark.parametrize("second_dtype", [torch.float64, torch.float32], ids=["two_calls", "one"])
@pytest.mark.parametrize("first_step_done", [False, True], ids=["first_step", "later_step"])
@pytest.mark.parametrize("spoiler", list(SPOILERS))
def test_bad_second_group_changes_nothing_anywhere(spoiler, first_step_done, second_dtype):
    spoil, match = SPOILERS[spoiler]
    first, second = _groups(second_dtype)
    opt = torchext.optim.SGD(
        [{"params": first}, {"params": second, "lr": 0.05}], lr=0.1, momentum=0.9
    )
    if first_step_done:
        opt.step()
    spoil(opt, second)
    params = [p.detach().clone() for p in first + second]
    grads = [p.grad.clone() for p in first + second]
    state = {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for p, s in opt.state.items()}
    with pytest.raises((RuntimeError, TypeError, ValueError), match=match):
        opt.step()
    for p, before, grad in zip(first + second, params, grads):
        assert torch.equal(p.detach(), before) and torch.equal(p.grad, grad)
    assert {id(p) for p in opt.state} == set(state)
    for p, s in opt.state.items():
        for key, value in s.items():
            expected = state[id(p)][key]
            assert torch.equal(value, expected) if isinstance(value, torch.Tensor) else \
                value == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_bit_identical_to_the_default_path(dtype, threads):
    # Sizes around torch's 32-element vector blocks, and one large enough to be split over threads.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for cls in (torchext.optim.SGD, torch.optim.SGD):
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(n, generator=gen).to(dtype).requires_grad_()
                      for n in (1, 31, 32, 33, 100, 40_001)]
            opt = cls([{"params": params[:3]},
                       {"params": params[3:], "nesterov": True, "weight_decay": 1e-2}],
                      lr=0.01, momentum=0.9)
            for _ in range(4):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen).to(dtype)
                opt.step()
            runs.append((params, opt))
    finally:
        torch.set_num_threads(previous)
    (ours, ours_opt), (stock, stock_opt) = runs
    for a, b in zip(ours, stock):
        assert torch.equal(a, b)
        buffers = ours_opt.state[a]["momentum_buffer"], stock_opt.state[b]["momentum_buffer"]
        assert torch.equal(*buffers)


@pytest.mark.parametrize("init_scale", [2.0**10, 1000.0], ids=["power_of_two", "odd"])
def test_grad_scaler_bit_identical_to_stock(init_scale):
    # GradScaler unscales by multiplying with its inverse scale; the fused op does the same.
    runs = []
    for cls in (torchext.optim.SGD, torch.optim.SGD):
        torch.manual_seed(0)
        model = torch.nn.Linear(7, 3)
        opt = cls(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            opt.zero_grad()
            loss = model(torch.randn(4, 7, generator=gen)).pow(2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append(list(model.parameters()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _two_groups_of_one_dtype(momentum=0.9, cls=torchext.optim.SGD):
    first, second = _groups(torch.float32)
    return first + second, cls(
        [{"params": first}, {"params": second, "lr": 0.05, "nesterov": True, "weight_decay": 0.1}],
        lr=0.1, momentum=momentum)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_a_plain_multi_group_step_is_one_cpp_call(momentum):
    # Plain groups of one dtype each: _C.sgd_step_ takes the whole step (returns True), stepping
    # every group as torch.optim.SGD does, bit for bit, and storing the buffers it creates.
    params, opt = _two_groups_of_one_dtype(momentum)
    stock_params, stock = _two_groups_of_one_dtype(momentum, torch.optim.SGD)
    for step in range(3):
        for p, q in zip(params, stock_params):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            q.grad = p.grad.clone()
        assert torchext._C.sgd_step_(opt.param_groups, opt.state) is True
        stock.step()
    for p, q in zip(params, stock_params):
        assert torch.equal(p, q)
        assert ("momentum_buffer" in opt.state[p]) == (momentum != 0)
        if momentum:
            assert torch.equal(opt.state[p]["momentum_buffer"], stock.state[q]["momentum_buffer"])


@pytest.mark.parametrize("bad", ["grad_shape", "buffer_dtype"])
def test_the_cpp_step_declines_a_bad_later_group_before_any_write(bad):
    params, opt = _two_groups_of_one_dtype()
    for p in params:
        p.grad = torch.ones_like(p)
    if bad == "grad_shape":
        params[2].grad.data = torch.randn(5)
    else:
        opt.step()  # buffers exist
        opt.state[params[2]]["momentum_buffer"] = torch.zeros(2, 2, dtype=torch.float64)
    before = [p.detach().clone() for p in params]
    buffers = {p: s["momentum_buffer"].clone() for p, s in opt.state.items()}
    assert torchext._C.sgd_step_(opt.param_groups, opt.state) is False  # declined, for the plan
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert set(opt.state) == set(buffers)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in buffers.items())


def test_the_cpp_step_declines_what_the_python_plan_decides():
    # A tensor lr, several dtypes in one group: False, and nothing changed.
    params, opt = _two_groups_of_one_dtype()
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.param_groups[1]["lr"] = torch.tensor(0.05)
    assert torchext._C.sgd_step_(opt.param_groups, opt.state) is False
    opt.param_groups[1]["lr"] = 0.05
    params[3].data = params[3].data.double()
    params[3].grad = torch.ones_like(params[3])
    assert torchext._C.sgd_step_(opt.param_groups, opt.state) is False
    assert all(torch.equal(p.detach().to(b.dtype), b) for p, b in zip(params, before))
    assert not opt.state
