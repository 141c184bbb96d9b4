"""torch.ops.torchext.fused_sgd_ called directly, against torch's own SGD arithmetic.

The reference is torch.optim.SGD's default path (torch.optim.sgd._single_tensor_sgd on the CPU,
_multi_tensor_sgd on CUDA) applied to clones in the same test; float16/bfloat16 must match it bit
for bit. Also: opcheck, every bad call (a clear error and
untouched tensors), GradScaler's grad_scale/found_inf, non-contiguous and zero-size tensors,
reduced precision; the direct binding against torch.ops; each ISA build of the CPU spans.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch.optim.sgd import _multi_tensor_sgd, _single_tensor_sgd

import torchext  # noqa: F401  (registers the ops)
from torchext import ops


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


HYPER = {
    "lr": 0.1,
    "momentum": 0.9,
    "dampening": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
    "maximize": False,
}
# Sizes: a matrix, an odd vector (vector tails), an empty tensor, and one long enough to be split
# into several chunks and threads.
SHAPES = [(3, 4), (7,), (0, 3), (70001,)]


def make(shapes, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]
    bufs = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]
    return params, grads, bufs


def clones(ts):
    return [t.clone() for t in ts]


def reference(params, grads, bufs, first, hyper):
    """torch's default SGD path on clones: (params, buffers) after one step.

    The default path is the per-tensor loop on the CPU and the _foreach kernels on CUDA.
    """
    step = _multi_tensor_sgd if params[0].is_cuda else _single_tensor_sgd
    params = clones(params)
    with_buf = hyper["momentum"] != 0
    buf_list = [None if f else b.clone() for b, f in zip(bufs, first)] if with_buf else []
    step(
        params,
        clones(grads),
        buf_list if with_buf else [None] * len(params),
        None,
        None,
        has_sparse_grad=False,
        **{k: float(v) if k == "lr" else v for k, v in hyper.items()},
    )
    return params, buf_list


def run_op(params, grads, bufs, first, hyper, **kwargs):
    with_buf = hyper["momentum"] != 0
    ops.fused_sgd_(
        params, grads, bufs if with_buf else [], first if with_buf else [], **hyper, **kwargs
    )


def assert_close(actual, expected, dtype):
    # Values are O(1); atol covers 1-ulp differences (fused vs unfused multiply-add) after
    # cancellation near zero.
    rtol, atol = {torch.float64: (1e-14, 1e-14), torch.float32: (1e-6, 1e-6)}[dtype]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "momentum,dampening,nesterov",
    [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.5, False), (0.9, 0.0, True)],
)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_matches_torch(
    device, dtype, momentum, dampening, nesterov, weight_decay, maximize, tensor_lr
):
    params, grads, bufs = make(SHAPES, dtype, device)
    hyper = {
        "lr": 0.05,
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": weight_decay,
        "nesterov": nesterov,
        "maximize": maximize,
    }
    if tensor_lr:
        hyper["lr"] = torch.tensor(0.05, device=device)
    first = [True, False, True, False]  # buffers on their first and on a later step
    expected_p, expected_b = reference(params, grads, bufs, first, hyper)
    grads_before = clones(grads)
    run_op(params, grads, bufs, first, hyper)
    assert_close(params, expected_p, dtype)
    if momentum:
        assert_close(bufs, expected_b, dtype)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_before))  # no grad_scale: untouched


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize(
    "changes",
    [{}, {"weight_decay": 1e-2, "nesterov": True}, {"dampening": 0.3, "maximize": True}],
    ids=["momentum", "decay-nesterov", "dampening-maximize"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_reduced_precision_bit_identical_to_torch(device, dtype, first, changes, threads):
    # torch rounds after each op of its step, and differently in its vectorised loops and their
    # tails, whose places depend on how many threads split a large tensor (70001 elements here).
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params, grads, bufs = make(SHAPES, dtype, device)
        hyper = dict(HYPER, **changes)
        expected_p, expected_b = reference(params, grads, bufs, [first] * len(SHAPES), hyper)
        run_op(params, grads, bufs, [first] * len(SHAPES), hyper)
    finally:
        torch.set_num_threads(previous)
    for actual, expected in zip(params + bufs, expected_p + expected_b):
        assert torch.equal(actual, expected), (actual.float() - expected.float()).abs().max()


@pytest.mark.parametrize("device", devices())
def test_many_tensors_and_chunks(device):
    # More tensors than one kernel argument holds, and tensors split over several launches.
    shapes = [(5,)] * 130 + [(200_003,)] * 3
    params, grads, bufs = make(shapes, torch.float32, device)
    first = [i % 3 == 0 for i in range(len(shapes))]
    expected_p, expected_b = reference(params, grads, bufs, first, HYPER)
    run_op(params, grads, bufs, first, HYPER)
    assert_close(params, expected_p, torch.float32)
    assert_close(bufs, expected_b, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_more_blocks_than_one_launch_cuda():
    shapes = [(65536 * 6 + 5,)] * 60  # 7 chunks each: 420 blocks, over the per-launch limit
    params, grads, bufs = make(shapes, torch.float32, "cuda")
    first = [i % 2 == 0 for i in range(len(shapes))]
    expected_p, expected_b = reference(params, grads, bufs, first, HYPER)
    run_op(params, grads, bufs, first, HYPER)
    assert_close(params, expected_p, torch.float32)
    assert_close(bufs, expected_b, torch.float32)


@pytest.mark.parametrize("device", devices())
def test_non_contiguous(device):
    base_p, base_g, base_b = make([(6, 8)] * 3, torch.float64, device)
    # Transposed params with contiguous grads (different layouts: stepped in copies), strided
    # slices (not dense), and a triple sharing one transposed layout (stepped in place).
    params = [base_p[0].t(), base_p[1][:, ::2], base_p[2].t()]
    grads = [base_g[0].t().contiguous(), base_g[1][:, ::2], base_g[2].t()]
    bufs = [base_b[0].t(), base_b[1][:, ::2], base_b[2].t()]
    first = [False, False, False]
    expected_p, expected_b = reference(params, grads, bufs, first, HYPER)
    run_op(params, grads, bufs, first, HYPER)
    assert_close(params, expected_p, torch.float64)
    assert_close(bufs, expected_b, torch.float64)
    assert params[0].data_ptr() == base_p[0].data_ptr()  # still views of the same storage


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("first", [True, False])
def test_grad_scale_unscales(device, first):
    params, grads, bufs = make(SHAPES, torch.float32, device)
    scale = torch.tensor(1024.0, device=device)
    scaled = [g * scale for g in grads]
    expected_p, expected_b = reference(params, grads, bufs, [first] * len(SHAPES), HYPER)
    run_op(
        params,
        scaled,
        bufs,
        [first] * len(SHAPES),
        HYPER,
        grad_scale=scale,
        found_inf=torch.zeros((), device=device),
    )
    assert_close(params, expected_p, torch.float32)
    assert_close(bufs, expected_b, torch.float32)
    assert_close(scaled, grads, torch.float32)  # stored back unscaled, as torch's fused SGD does


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_found_inf_skips_everything(device, first, momentum):
    params, grads, bufs = make(SHAPES, torch.float32, device)
    before = clones(params + grads + bufs)
    run_op(
        params,
        grads,
        bufs,
        [first] * len(SHAPES),
        dict(HYPER, momentum=momentum),
        grad_scale=torch.tensor(8.0, device=device),
        found_inf=torch.ones((), device=device),
    )
    assert all(torch.equal(a, b) for a, b in zip(params + grads + bufs, before))


def _bad_calls(device):
    """(description, call kwargs, expected message) for calls the op must refuse."""
    p, g, b = make([(3, 4), (4, 3)], torch.float32, device)
    ok = {"params": p, "grads": g, "bufs": b, "first": [False, False], "hyper": HYPER, "kwargs": {}}

    def case(name, match, **changes):
        return pytest.param(name, dict(ok, **changes), match, id=name)

    t = torch.tensor
    return [
        case("grads_length", r"got 2 params but 1 grads", grads=g[:1]),
        case(
            "grad_shape",
            r"grads\[1\] has shape \[3, 4\] but params\[1\] has shape \[4, 3\]",
            grads=[g[0], g[1].reshape(3, 4)],
        ),
        case(
            "grad_dtype",
            r"grads\[1\] has dtype Double but params\[1\] has dtype Float",
            grads=[g[0], g[1].double()],
        ),
        case(
            "buffer_shape", r"momentum_buffers\[1\] has shape \[12\]", bufs=[b[0], b[1].reshape(-1)]
        ),
        case("buffers_length", r"got 2 params but 1 momentum_buffers", bufs=b[:1], first=[True]),
        case("first_step_length", r"is_first_step has 1 entries but there are 2", first=[True]),
        case(
            "buffers_without_momentum",
            r"momentum is 0 but 2 momentum_buffers",
            hyper=dict(HYPER, momentum=0.0),
        ),
        case(
            "lr_two_elements",
            r"tensor lr must have exactly one element",
            hyper=dict(HYPER, lr=t([0.1, 0.2], device=device)),
        ),
        case(
            "integer_params",
            r"params\[1\] has dtype Long",
            params=[p[0], t([[1] * 3] * 4, device=device)],
            grads=[g[0], t([[1] * 3] * 4, device=device)],
            bufs=[b[0], t([[1] * 3] * 4, device=device)],
        ),
        case(
            "grad_scale_shape",
            r"grad_scale must have exactly one element",
            kwargs={"grad_scale": t([1.0, 2.0], device=device)},
        ),
        case(
            "found_inf_dtype",
            r"found_inf must be float32",
            kwargs={"found_inf": t(0.0, dtype=torch.float64, device=device)},
        ),
    ]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name,call,match", _bad_calls("cpu"))
def test_bad_call_raises_and_changes_nothing(device, name, call, match):
    call = {
        k: ([t.to(device) for t in v] if k in ("params", "grads", "bufs") else v)
        for k, v in call.items()
    }
    call["hyper"] = {
        k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in call["hyper"].items()
    }
    call["kwargs"] = {k: v.to(device) for k, v in call["kwargs"].items()}
    tensors = call["params"] + call["grads"] + call["bufs"]
    before = clones(tensors)
    with_buf = call["hyper"]["momentum"] != 0 or name == "buffers_without_momentum"
    with pytest.raises(RuntimeError, match=match):
        ops.fused_sgd_(
            call["params"],
            call["grads"],
            call["bufs"] if with_buf else [],
            call["first"] if with_buf else [],
            **call["hyper"],
            **call["kwargs"],
        )
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_opcheck(device, tensor_lr, scaled):
    params, grads, bufs = make([(3, 4), (5,)], torch.float32, device)
    kwargs = dict(HYPER)
    op = torch.ops.torchext.fused_sgd_.default
    if tensor_lr:
        kwargs["lr"] = torch.tensor(0.1, device=device)
        op = torch.ops.torchext.fused_sgd_.tensor_lr
    if scaled:
        kwargs.update(
            grad_scale=torch.tensor(4.0, device=device), found_inf=torch.zeros((), device=device)
        )
    torch.library.opcheck(op, (params, grads, bufs, [True, False]), kwargs)


@pytest.mark.parametrize("device", devices())
def test_bumps_versions_like_inplace_ops(device):
    # A step between forward and backward must be caught by autograd, as after torch's add_.
    param = torch.ones(3, device=device, requires_grad=True)
    loss = (param * param).sum()
    with torch.no_grad():
        ops.fused_sgd_([param], [torch.ones(3, device=device)], [], [], **dict(HYPER, momentum=0.0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_direct_binding_matches_torch_ops():
    # ops.fused_sgd_ takes the pybind binding for plain tensors; torch.ops must give the same bits.
    params, grads, bufs = make(SHAPES, torch.float32, "cpu")
    twin = [clones(ts) for ts in (params, grads, bufs)]
    hyper = dict(HYPER, weight_decay=1e-2, nesterov=True)
    first = [True, False, True, False]
    scale = {"grad_scale": torch.tensor(2.0), "found_inf": torch.zeros(())}
    run_op(params, grads, bufs, first, hyper, **scale)
    torch.ops.torchext.fused_sgd_(*twin, first, **hyper, **scale)
    for a, b in zip(params + grads + bufs, sum(twin, [])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_every_cpu_kernel_build(tmp_path, capability):
    # ATEN_CPU_CAPABILITY makes the CPU kernel use its portable (default) or AVX2 spans instead of
    # the best the CPU has (AVX-512 here), as it makes torch use its own: run the parity tests so.
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    tests = "matches_torch or reduced_precision or chunks or non_contiguous or grad_scale"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", tests],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def _meta(t):
    return torch.empty_like(t, device="meta")


@pytest.mark.parametrize(
    "name,spoil,match",
    [
        ("meta_grad", lambda c: c["grads"].__setitem__(1, _meta(c["grads"][1])),
         r"grads\[1\] is on meta but params\[1\] is on cpu"),
        ("meta_buffer", lambda c: c["bufs"].__setitem__(0, _meta(c["bufs"][0])),
         r"momentum_buffers\[0\] is on meta but params\[0\] is on cpu"),
        ("meta_param", lambda c: c["params"].__setitem__(1, _meta(c["params"][1])),
         r"params\[1\] is on meta but params\[0\] is on cpu"),
        ("meta_lr", lambda c: c.__setitem__("lr", torch.tensor(0.1, device="meta")),
         r"lr is on meta but the params are on cpu"),
        ("meta_grad_scale", lambda c: c.__setitem__("grad_scale", torch.ones((), device="meta")),
         r"grad_scale is on meta but the params are on cpu"),
        ("meta_found_inf", lambda c: c.__setitem__("found_inf", torch.zeros((), device="meta")),
         r"found_inf is on meta but the params are on cpu"),
    ],
)
def test_meta_tensors_among_cpu_ones_are_refused(name, spoil, match):
    # The dispatcher sends a call with any meta tensor to the fake kernel, which must refuse a
    # mix of devices as the real kernels do, instead of returning with nothing updated.
    params, grads, bufs = make([(3, 4), (5,)], torch.float32, "cpu")
    call = {"params": params, "grads": grads, "bufs": bufs, "lr": 0.1, "grad_scale": None,
            "found_inf": None}
    spoil(call)
    before = clones([t for t in params + grads + bufs if t.device.type == "cpu"])
    with pytest.raises(RuntimeError, match=match):
        ops.fused_sgd_(call["params"], call["grads"], call["bufs"], [False, False],
                       **dict(HYPER, lr=call["lr"]), grad_scale=call["grad_scale"],
                       found_inf=call["found_inf"])
    after = [t for t in params + grads + bufs if t.device.type == "cpu"]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
