"""torchext.optim.SGD: torch.optim.SGD, stepped by one fused C++/CUDA operator call per bucket.

Numerically this is torch.optim.SGD's default path, bit for bit (same order of operations and
roundings in every floating dtype, same ``state_dict`` layout, same error messages); the
difference is how the step runs. torch's default path walks the parameters in Python (or issues
several ``_foreach`` kernels per hyper-parameter), while this one reads each parameter, gradient
and momentum buffer once and writes them once, in a single ``torchext.fused_sgd_`` call per
(device, dtype) bucket of each parameter group. How a step is checked and sorted (fused op, or
torch's own implementation for sparse gradients and ``differentiable=True``) is ``_sgd_step``.

For small models the step is Python overhead, so the hot path is kept short: a step of the usual
kind (plain hyper-parameters, dense tensors, one device and dtype per group) is read, checked and
made by one C++ call (``_C.sgd_step_``), whatever the number of groups; other steps are planned
in Python (``_sgd_step``) and call the op through its direct binding (see ``ops.fused_sgd_``);
torch's step wrapper (hooks, profiler range, grad mode) is applied only when a hook is
registered, a profiler runs or ``torch.compile`` traces the step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from . import _C, _sgd_step

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent (optionally with momentum), fused.

    A drop-in replacement for :class:`torch.optim.SGD`: the same signature and defaults
    (``params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
    maximize=False, foreach=None, differentiable=False, fused=None``), the same update::

        g = -grad if maximize else grad
        g = g + weight_decay * p
        buf = g (first step)   or   buf = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov)   or   g = buf
        p = p - lr * g

    rounded as torch's default path rounds it (bit-identical in float32, float64, float16 and
    bfloat16), and the same ``state_dict`` (``state[i]["momentum_buffer"]`` and identical
    ``param_groups`` keys), so checkpoints move freely between the two classes. ``lr`` may be a
    float or a one-element tensor (read by the kernel where it lives, without a host
    synchronisation).

    ``foreach`` and ``fused`` choose between torch's implementations; whatever their values,
    this class runs its fused op. ``fused=True`` keeps torch's conditions: it refuses what torch
    refuses (non-floating or unsupported-device parameters, sparse gradients, ``differentiable``,
    ``foreach=True``) with torch's messages. Parameters with sparse gradients, and every parameter
    of an optimizer built with ``differentiable=True``, are stepped by torch's own implementation,
    so their numbers (and, for ``differentiable``, the autograd graph of the update) are torch's.

    Each step first checks every parameter group (hyper-parameters, gradients, momentum buffers,
    dtypes, devices) and raises before anything is written. Gradients that are ``None`` are
    skipped; a parameter gets its momentum buffer the first time it has a gradient. Complex
    parameters are stepped as real views.

    ``torch.amp.GradScaler`` hands this optimizer its scale and inf flag when the fused op steps
    every parameter: gradients are unscaled inside the kernel (multiplied by GradScaler's
    inverse scale, as ``unscale_`` does) and written back unscaled, and a step with infs changes
    nothing. That needs no host synchronisation, except on a step where some parameter would get
    its first momentum buffer: then the inf flag is read on the host so that a skipped step
    creates no state. Otherwise (sparse gradients, ``differentiable``, float16 gradients without
    ``fused=True``) GradScaler unscales and checks by itself, exactly as for torch.optim.SGD.
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
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        # Checks and messages are torch.optim.SGD's, word for word.
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler may hand its scale to step() (read by GradScaler.step).

        True when the fused op steps every parameter. Otherwise GradScaler unscales and checks
        for infs itself, as for torch.optim.SGD: for torch-stepped parameters, and for float16
        gradients (which GradScaler refuses to unscale, as for torch's default path) unless the
        group asked for ``fused=True`` (torch's fused path accepts them).
        """
        if self.defaults["differentiable"]:
            return False
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                buf = self.state[p].get("momentum_buffer") if p in self.state else None
                if g.is_sparse or isinstance(buf, Tensor) and buf.is_sparse:
                    return False
                if g.dtype == torch.float16 and not group["fused"]:
                    return False
        return True

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
            or self.defaults["differentiable"]
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

        if (
            grad_scale is None
            and found_inf is None
            and not self.defaults["differentiable"]
            and not torch.compiler.is_compiling()
            and not torch._C._is_torch_function_mode_enabled()
        ):
            # A step of the usual kind is read, checked and made in one C++ call; it declines
            # (having done nothing) whatever needs the plan below, which also names problems.
            if _C.sgd_step_(self.param_groups, self.state):
                return loss
        plan = _sgd_step.plan(self, scaled=grad_scale is not None or found_inf is not None)
        if found_inf is not None and plan.creates_buffers():
            # A skipped first step must leave no (uninitialised) buffers behind: decide on the
            # host. The kernels then need no flag.
            if found_inf.item() != 0:
                return loss
            found_inf = None
        plan.run(grad_scale, found_inf)
        return loss

    _step_without_grad = _use_grad_for_differentiable(_step)
    _step_with_hooks = Optimizer.profile_hook_step(_step_without_grad)
