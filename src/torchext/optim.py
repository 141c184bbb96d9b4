"""torchext.optim.SGD: torch.optim.SGD, stepped by one fused C++/CUDA operator call per bucket.

Numerically this is torch.optim.SGD (same order of operations, same ``state_dict`` layout, same
error messages); the difference is how the step runs. torch's default path walks the parameters
in Python (or issues several ``_foreach`` kernels per hyper-parameter), while this one reads each
parameter, gradient and momentum buffer once and writes them once, in a single
``torchext.fused_sgd_`` call per (device, dtype) bucket of each parameter group.

For small models the step is Python overhead, so the hot path is kept short: the op is called
through its direct binding (see ``ops.fused_sgd_``), a group on one device and dtype skips the
general grouping, and torch's step wrapper (hooks, profiler range, grad mode) is applied only
when a hook is registered, a profiler runs or ``torch.compile`` traces the step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from . import ops

__all__ = ["SGD"]


def _per_device(t: Tensor | None, moved: dict, name: str, device: torch.device):
    """``t`` on ``device``, moved once per step (GradScaler keeps its tensors on one device)."""
    if t is None:
        return None
    cache = moved.setdefault(name, {})
    if device not in cache:
        cache[device] = t.to(device)
    return cache[device]


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _select(items: list, indices) -> list:
    """``items`` at ``indices``; ``items`` itself when the indices are all of them, in order."""
    return items if len(indices) == len(items) else [items[i] for i in indices]


class SGD(Optimizer):
    r"""Stochastic gradient descent (optionally with momentum), fused.

    A drop-in replacement for :class:`torch.optim.SGD` with the same arguments (less the
    ``foreach``/``fused``/``differentiable`` implementation switches), the same update::

        g = -grad if maximize else grad
        g = g + weight_decay * p
        buf = g (first step)   or   buf = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov)   or   g = buf
        p = p - lr * g

    and the same ``state_dict`` (``state[i]["momentum_buffer"]`` and identical ``param_groups``
    keys), so checkpoints move freely between the two classes. ``lr`` may be a float or a
    one-element tensor (read by the kernel where it lives, without a host synchronisation).

    Each step makes one ``torchext.fused_sgd_`` call per (device, dtype) bucket of a parameter
    group. Gradients that are ``None`` are skipped; a parameter gets its momentum buffer the first
    time it has a gradient. Complex parameters are stepped as real views. Sparse gradients are
    refused, as by torch's fused SGD.

    ``torch.amp.GradScaler`` hands this optimizer its scale and inf flag (it sets
    ``_step_supports_amp_scaling``): gradients are unscaled inside the kernel and written back
    unscaled, and a step with infs changes nothing. That needs no host synchronisation, except on
    a step where some parameter would get its first momentum buffer: then the inf flag is read on
    the host so that a skipped step creates no state.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        # Messages are torch.optim.SGD's, word for word.
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        # The implementation switches are kept, at torch's defaults, so that param_groups have
        # torch.optim.SGD's keys; this class ignores them.
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _collect(self, group: dict[str, Any]):
        """The group's parameters that have gradients, with their buffers (None: first step)."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        buffers: list[Tensor | None] = []
        with_momentum = group["momentum"] != 0
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "torchext.optim.SGD does not support sparse gradients (a parameter of shape "
                    f"{list(p.shape)} has one); use torch.optim.SGD for sparse gradients"
                )
            params.append(p)
            grads.append(p.grad)
            if with_momentum:
                state = self.state.get(p)
                buffers.append(None if state is None else state.get("momentum_buffer"))
        return params, grads, buffers

    def _step_group(self, group, params, grads, buffers, grad_scale, found_inf, moved) -> None:
        momentum = group["momentum"]
        is_first_step = [b is None for b in buffers]
        if any(is_first_step):
            buffers = [torch.empty_like(p) if b is None else b for p, b in zip(params, buffers)]
        lists = [params, grads] + ([buffers] if momentum != 0 else [])
        kinds = {(p.device, p.dtype) for p in params}
        if len(kinds) == 1 and not params[0].is_complex() and not torch.compiler.is_compiling():
            # The usual case, one bucket: skip the general grouping (several microseconds).
            ((device, _),) = kinds
            buckets = {(device, None): (lists, range(len(params)))}
        else:
            if any(p.is_complex() for p in params):  # stepped as (..., 2) real views, as torch
                lists = [[_real(t) for t in ts] for ts in lists]
            buckets = Optimizer._group_tensors_by_device_and_dtype(lists, with_indices=True)
        lr = group["lr"]
        weight_decay = group["weight_decay"]
        if isinstance(weight_decay, Tensor):
            weight_decay = weight_decay.item()
        for (device, _), (tensors, indices) in buckets.items():
            bucket_lr = lr
            if isinstance(lr, Tensor) and lr.device != device and lr.device.type != "cpu":
                bucket_lr = _per_device(lr, moved, "lr", device)
            ops.fused_sgd_(
                tensors[0],
                tensors[1],
                tensors[2] if momentum != 0 else [],
                _select(is_first_step, indices) if momentum != 0 else [],
                lr=bucket_lr,
                momentum=momentum,
                dampening=group["dampening"],
                weight_decay=weight_decay,
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                grad_scale=_per_device(grad_scale, moved, "grad_scale", device),
                found_inf=_per_device(found_inf, moved, "found_inf", device),
            )
        if momentum != 0:
            # Only now, after the kernels accepted the call, do new buffers enter the state.
            for p, b, first in zip(params, buffers, is_first_step):
                if first:
                    self.state[p]["momentum_buffer"] = b

    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if type(self).step is not SGD.step:
            # Called from a subclass's step, which Optimizer wrapped with the hooks.
            return self._step_without_grad(closure)
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or torch.compiler.is_compiling()
            or torch.autograd._profiler_enabled()
        ):
            return self._step_with_hooks(closure)
        # Nothing to run around the step: skip the wrappers (tens of microseconds, more than the
        # step of a small network), keeping their effect on grad mode.
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            loss = self._step(closure)
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        self._optimizer_step_code()
        return loss

    # Optimizer wraps a class's step with its hook and profiler wrapper unless `hooked` is set;
    # this step applies that wrapper itself, and only when there is something for it to do.
    step.hooked = True

    def _step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Set by torch.amp.GradScaler.step for the duration of this call.
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and not isinstance(found_inf, Tensor):
            # GradScaler's sum over an empty set of devices is the int 0.
            if found_inf:
                return loss
            found_inf = None

        work = [(group, *self._collect(group)) for group in self.param_groups]
        any_first_step = any(
            group["momentum"] != 0 and any(b is None for b in buffers)
            for group, _, _, buffers in work
        )
        if found_inf is not None and any_first_step:
            # A skipped first step must leave no (uninitialised) buffers behind: decide on the
            # host. The kernels then need no flag.
            if found_inf.item() != 0:
                return loss
            found_inf = None

        moved: dict[str, dict[torch.device, Tensor]] = {}
        for group, params, grads, buffers in work:
            if params:
                self._step_group(group, params, grads, buffers, grad_scale, found_inf, moved)
        return loss

    _step_without_grad = _use_grad_for_differentiable(_step)
    _step_with_hooks = Optimizer.profile_hook_step(_step_without_grad)
