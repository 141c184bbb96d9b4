"""Fake kernels of the torchext operators: output metadata and argument checks, no data.

``torch.library.register_fake`` makes each function the op's kernel under FakeTensorMode
(``torch.compile``, ``torch.export``) and for meta tensors. A fake kernel must return exactly
what the real kernels return — sizes, strides, dtype, device — for every input layout: the
C++ kernels of ``linear`` and ``linear_backward`` always return fresh contiguous tensors,
whatever the strides of their inputs, and so do these. They also make the C++ kernels' checks
(csrc/ops/linear_common.h, csrc/ops/fused_sgd_checks.h), message for message, so that a call
mixing meta and real tensors, which the dispatcher routes here, is refused exactly as a call
mixing two real devices is refused by the kernels.
"""

from typing import Optional

import torch
from torch import Tensor


def dtype_name(dtype: torch.dtype) -> str:
    """The name C++ error messages use (c10::ScalarType), e.g. Float, Double, Half."""
    return {
        torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
        torch.bfloat16: "BFloat16",
    }.get(dtype, str(dtype).replace("torch.", ""))


def _check_same_dtype_and_device(op: str, name: str, t: Tensor, input: Tensor) -> None:
    torch._check(
        t.dtype == input.dtype,
        lambda: (
            f"{op}: {name} is {dtype_name(t.dtype)} but input is {dtype_name(input.dtype)}; "
            "they must have the same dtype"
        ),
    )
    torch._check(
        t.device == input.device,
        lambda: (
            f"{op}: {name} is on {t.device} but input is on {input.device}; "
            "they must be on the same device"
        ),
    )


def check_linear_args(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """check_linear_args of csrc/ops/linear_common.h."""
    op = "torchext.linear"
    torch._check(
        weight.dim() == 2,
        lambda: (
            f"{op}: weight must be 2-D [out_features, in_features], got shape "
            f"{list(weight.shape)}"
        ),
    )
    torch._check(
        input.dim() >= 1, lambda: f"{op}: input must have at least 1 dimension, got a 0-d tensor"
    )
    for name, t in (("input", input), ("weight", weight)):
        torch._check(
            t.dtype.is_floating_point,
            lambda name=name, t=t: (
                f"{op}: expected a floating-point {name}, got {dtype_name(t.dtype)} "
                "(integer and complex tensors are not supported)"
            ),
        )
    _check_same_dtype_and_device(op, "weight", weight, input)
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: (
            f"{op}: input and weight shapes cannot be multiplied "
            f"({input.numel() // max(input.shape[-1], 1)}x{input.shape[-1]} and "
            f"{weight.shape[1]}x{weight.shape[0]}): the input's last dimension "
            f"({input.shape[-1]}) must equal in_features ({weight.shape[1]})"
        ),
    )
    if bias is not None:
        _check_same_dtype_and_device(op, "bias", bias, input)
        torch._check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: (
                f"{op}: bias must have shape [{weight.shape[0]}] (out_features), "
                f"got {list(bias.shape)}"
            ),
        )


def check_linear_backward_args(grad_output: Tensor, input: Tensor, weight: Tensor) -> None:
    """check_linear_backward_args of csrc/ops/linear_common.h."""
    op = "torchext.linear_backward"
    check_linear_args(input, weight, None)
    _check_same_dtype_and_device(op, "grad_output", grad_output, input)
    expected = [*input.shape[:-1], weight.shape[0]]
    torch._check(
        list(grad_output.shape) == expected,
        lambda: (
            f"{op}: grad_output must have shape {expected} (the output of linear), "
            f"got {list(grad_output.shape)}"
        ),
    )


@torch.library.register_fake("torchext::linear")
def _linear_fake(input, weight, bias=None):
    check_linear_args(input, weight, bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))  # contiguous, as the kernels


@torch.library.register_fake("torchext::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    check_linear_backward_args(grad_output, input, weight)
    # Contiguous, whatever the inputs' strides: the kernels allocate with at::empty(sizes).
    grad_input = input.new_empty(input.shape) if output_mask[0] else None
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = grad_output.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


def _check_fused_sgd_devices(params, grads, momentum_buffers, lr, grad_scale, found_inf):
    # The device checks of fused_sgd::check_args (csrc/ops/fused_sgd_checks.h).
    if not params:
        return
    device = params[0].device
    op = "torchext.fused_sgd_"
    for i, p in enumerate(params):
        torch._check(
            p.device == device,
            lambda i=i, p=p: (
                f"{op}: params[{i}] is on {p.device} but params[0] is on {device}; "
                "all tensors of one call share a device"
            ),
        )
    for name, tensors in (("grads", grads), ("momentum_buffers", momentum_buffers)):
        for i, (t, p) in enumerate(zip(tensors, params)):
            torch._check(
                t.device == p.device,
                lambda name=name, i=i, t=t, p=p: (
                    f"{op}: {name}[{i}] is on {t.device} but params[{i}] is on {p.device}"
                ),
            )
    if isinstance(lr, Tensor):
        torch._check(
            lr.device == device or lr.device.type == "cpu",
            lambda: (
                f"{op}: lr is on {lr.device} but the params are on {device}; "
                "put lr on the params' device or on the CPU"
            ),
        )
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None:
            torch._check(
                t.device == device,
                lambda name=name, t=t: (
                    f"{op}: {name} is on {t.device} but the params are on {device}"
                ),
            )


@torch.library.register_fake("torchext::fused_sgd_")
def _fused_sgd_fake(params, grads, momentum_buffers, is_first_step, *, lr, grad_scale=None,
                    found_inf=None, **hyper):
    _check_fused_sgd_devices(params, grads, momentum_buffers, lr, grad_scale, found_inf)


@torch.library.register_fake("torchext::fused_sgd_.tensor_lr")
def _fused_sgd_tensor_lr_fake(params, grads, momentum_buffers, is_first_step, *, lr,
                              grad_scale=None, found_inf=None, **hyper):
    _check_fused_sgd_devices(params, grads, momentum_buffers, lr, grad_scale, found_inf)
