"""Typed Python entry points to the torchext operators, and their fake kernels.

The schemas are defined in C++ (csrc/ops/registration.cpp); this module only
adds what Python needs: readable wrappers and ``register_fake`` shape functions
so that ``torch.compile(fullgraph=True)`` traces through the ops.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _C

_linear = torch.ops.torchext.linear.default
_linear_backward = torch.ops.torchext.linear_backward.default
_fused_sgd = torch.ops.torchext.fused_sgd_.default
_fused_sgd_tensor_lr = torch.ops.torchext.fused_sgd_.tensor_lr
# True when an argument (a tensor or a sequence of them) is a tensor subclass with its own
# __torch_function__, or a __torch_function__ mode is active: one C call per argument.
_has_torch_function = torch._C._has_torch_function


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``input @ weight.T + bias``: the same contract as ``torch.nn.functional.linear``.

    Plain tensors take the direct binding (``_C.linear``), a few microseconds
    cheaper per call than the generic ``torch.ops`` path. Both reach the same
    dispatcher entry; ``torch.ops`` is kept wherever Python-level dispatch must
    see the call: under ``torch.compile``, tensor subclasses and
    ``__torch_function__`` modes.
    """
    if (
        not torch.compiler.is_compiling()
        and type(input) is Tensor
        and not torch._C._is_torch_function_mode_enabled()
    ):
        return _C.linear(input, weight, bias)
    return _linear(input, weight, bias)


def linear_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor, output_mask: Sequence[bool]
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`linear` for (input, weight, bias); masked-out entries are None."""
    return _linear_backward(grad_output, input, weight, list(output_mask))


def fused_sgd_(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffers: List[Tensor],
    is_first_step: List[bool],
    *,
    lr,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One in-place SGD step over many tensors (see csrc/torchext/ops.h for the contract).

    ``lr`` is a float, or a one-element tensor that the kernel reads where it lives. Plain
    tensors and Parameters take the direct bindings (``_C.fused_sgd_``), several microseconds
    cheaper per call than ``torch.ops``; as for :func:`linear`, ``torch.ops`` is kept under
    ``torch.compile`` and wherever tensor subclasses or ``__torch_function__`` modes must see the
    call.
    """
    tensor_lr = isinstance(lr, Tensor)
    if (
        not torch.compiler.is_compiling()
        and not _has_torch_function(params)
        and not _has_torch_function(grads)
        and not _has_torch_function(momentum_buffers)
        and not (tensor_lr and _has_torch_function((lr,)))
        and not _has_torch_function((grad_scale, found_inf))
    ):
        direct = _C.fused_sgd_tensor_lr_ if tensor_lr else _C.fused_sgd_
        direct(
            params, grads, momentum_buffers, is_first_step, lr, momentum, dampening,
            weight_decay, nesterov, maximize, grad_scale, found_inf,
        )
        return
    op = _fused_sgd_tensor_lr if tensor_lr else _fused_sgd
    op(
        params,
        grads,
        momentum_buffers,
        is_first_step,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


# ---------------------------------------------------------------------------
# Fake kernels: output metadata only, with the same checks as the C++ kernels.


def _dtype_name(dtype: torch.dtype) -> str:
    # The names C++ error messages use (c10::ScalarType), e.g. Float, Double, Half.
    return {
        torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
        torch.bfloat16: "BFloat16",
    }.get(dtype, str(dtype).replace("torch.", ""))


def _check_same_dtype_and_device(name: str, t: Tensor, input: Tensor) -> None:
    torch._check(
        t.dtype == input.dtype,
        lambda: (
            f"torchext.linear: {name} is {_dtype_name(t.dtype)} but input is "
            f"{_dtype_name(input.dtype)}; they must have the same dtype"
        ),
    )
    torch._check(
        t.device == input.device,
        lambda: (
            f"torchext.linear: {name} is on {t.device} but input is on {input.device}; "
            "they must be on the same device"
        ),
    )


def _check_linear_args(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    # Mirrors check_linear_args in csrc/ops/linear_common.h, message for message.
    torch._check(
        weight.dim() == 2,
        lambda: (
            "torchext.linear: weight must be 2-D [out_features, in_features], got shape "
            f"{list(weight.shape)}"
        ),
    )
    torch._check(
        input.dim() >= 1,
        lambda: "torchext.linear: input must have at least 1 dimension, got a 0-d tensor",
    )
    for name, t in (("input", input), ("weight", weight)):
        torch._check(
            t.dtype.is_floating_point,
            lambda name=name, t=t: (
                f"torchext.linear: expected a floating-point {name}, got {_dtype_name(t.dtype)}"
            ),
        )
    _check_same_dtype_and_device("weight", weight, input)
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: (
            "torchext.linear: input and weight shapes cannot be multiplied "
            f"({input.numel() // max(input.shape[-1], 1)}x{input.shape[-1]} and "
            f"{weight.shape[1]}x{weight.shape[0]}): the input's last dimension "
            f"({input.shape[-1]}) must equal in_features ({weight.shape[1]})"
        ),
    )
    if bias is not None:
        _check_same_dtype_and_device("bias", bias, input)
        torch._check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: (
                f"torchext.linear: bias must have shape [{weight.shape[0]}], "
                f"got {list(bias.shape)}"
            ),
        )


@torch.library.register_fake("torchext::linear")
def _linear_fake(input, weight, bias=None):
    _check_linear_args(input, weight, bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("torchext::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    grad_input = torch.empty_like(input) if output_mask[0] else None
    grad_weight = torch.empty_like(weight) if output_mask[1] else None
    grad_bias = grad_output.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("torchext::fused_sgd_")
def _fused_sgd_fake(params, grads, momentum_buffers, is_first_step, **kwargs):
    return None


@torch.library.register_fake("torchext::fused_sgd_.tensor_lr")
def _fused_sgd_tensor_lr_fake(params, grads, momentum_buffers, is_first_step, **kwargs):
    return None
