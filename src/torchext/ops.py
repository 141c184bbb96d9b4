"""Typed Python entry points to the torchext operators.

The schemas, kernels, autograd and autocast are C++ (csrc/ops/); this module adds
what only Python needs: readable wrappers, and (importing ``_fake`` and
``_batching``) the fake kernels that let ``torch.compile`` and ``torch.export``
trace the ops and the vmap rules of ``torch.func``.
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
    dispatcher entry (so autograd, forward AD, autocast, vmap and the torch.func
    transforms behave the same); ``torch.ops`` is kept wherever Python-level
    dispatch must see the call: under ``torch.compile``, tensor subclasses and
    ``__torch_function__`` modes. TorchScript compiles only the first branch.
    """
    if torch.jit.is_scripting():
        return torch.ops.torchext.linear(input, weight, bias)
    else:
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


# Registered after the wrappers exist: fake kernels (torch.compile, meta tensors) and vmap rules.
from . import _batching, _fake  # noqa: E402, F401
