"""One step of torchext.optim.SGD: plan and check everything, then write.

A step touches several parameter groups, and within a group one ``torchext.fused_sgd_`` call per
(device, dtype) bucket. Each call checks its own arguments before it writes, but a bad gradient
in a later call would be found after earlier calls had written. So :func:`plan` first walks every
group — hyper-parameters, gradients, momentum buffers, dtypes, devices, the ``fused=True``
conditions — and raises, with the group and parameter named, before anything is written;
:meth:`StepPlan.run` then makes the calls and stores new momentum buffers last.

Parameters that torch must step itself are handed to torch's own implementation
(``torch.optim.sgd.sgd``), so their numbers are torch's by construction: parameters with a sparse
gradient (or a sparse momentum buffer, which torch creates for them) and, for an optimizer built
with ``differentiable=True``, every parameter (torch's ops record the update in the autograd graph).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _device_dtype_check_for_fused
from torch.optim.sgd import sgd as torch_sgd

from . import ops

_SUPPORTED_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.complex64, torch.complex128, torch.complex32,
)
_REDUCED = {torch.float16: "Half", torch.bfloat16: "BFloat16"}


def _where(group_index: int, param_index: int | None = None) -> str:
    where = f"torchext.optim.SGD: param_groups[{group_index}]"
    return where if param_index is None else f"{where}['params'][{param_index}]"


@dataclass
class Hyper:
    """A group's hyper-parameters, as the kernels take them."""

    lr: float | Tensor
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool


def _real(group: dict, key: str, index: int) -> float:
    value = group[key]
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        return value.item()
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{_where(index)}[{key!r}] must be a real number, got {value!r}")


def group_hyper(group: dict, index: int) -> Hyper:
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or lr.is_complex():
            raise ValueError(f"{_where(index)}['lr']: Tensor lr must be 1-element and real")
        if lr.dtype not in (torch.float32, torch.float64):
            lr = lr.double()  # torch reads any real dtype (as a Python number)
    else:
        lr = _real(group, "lr", index)
    return Hyper(lr, _real(group, "momentum", index), _real(group, "dampening", index),
                 _real(group, "weight_decay", index), bool(group["nesterov"]),
                 bool(group["maximize"]))


def _check_alphas(hyper: Hyper, dtype: torch.dtype, index: int) -> None:
    # torch converts each `alpha` of its add calls to a 16-bit dtype with an overflow check.
    limit = torch.finfo(dtype).max
    lr = hyper.lr.item() if isinstance(hyper.lr, Tensor) else hyper.lr
    for value in (-lr, hyper.weight_decay, 1 - hyper.dampening, hyper.momentum):
        if abs(value) > limit and value not in (float("inf"), float("-inf")):
            raise RuntimeError(
                f"{_where(index)}: value cannot be converted to type at::{_REDUCED[dtype]} "
                "without overflow"
            )


def _check_like(t: Tensor, p: Tensor, what: str, where: str) -> None:
    if t.layout != torch.strided:
        raise RuntimeError(f"{where}: its {what} has layout {t.layout}; only dense tensors "
                           "(and sparse gradients) are supported")
    if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
        raise RuntimeError(
            f"{where}: its {what} is {t.dtype} {list(t.shape)} on {t.device} but the parameter "
            f"is {p.dtype} {list(p.shape)} on {p.device}"
        )


def _overlaps(t: Tensor) -> bool:
    return torch._debug_has_internal_overlap(t) == 1


@dataclass
class _FusedGroup:
    """The parameters of one group that the fused op steps."""

    group: dict
    hyper: Hyper
    params: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    buffers: list = field(default_factory=list)  # None: first step


@dataclass
class _TorchGroup:
    """Parameters of one group stepped by torch's own implementation."""

    group: dict
    params: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    buffers: list = field(default_factory=list)


@dataclass
class StepPlan:
    state: Any
    fused: list
    torch: list

    def creates_buffers(self) -> bool:
        return any(b is None for g in self.fused if g.hyper.momentum != 0 for b in g.buffers)

    def run(self, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        new_buffers = []
        # torch's implementation first: should it raise after all, the fused calls have not
        # written yet.
        for work in self.torch:
            _run_torch(work)
            if work.group["momentum"] != 0:
                new_buffers += list(zip(work.params, work.buffers))
        moved: dict[str, dict[torch.device, Tensor]] = {}
        for work in self.fused:
            new_buffers += _run_fused(work, grad_scale, found_inf, moved)
        # Only now, after every call was accepted, do buffers enter the state.
        for p, b in new_buffers:
            self.state[p]["momentum_buffer"] = b


def plan(optimizer: Optimizer, scaled: bool) -> StepPlan:
    """Checks every group and sorts its parameters; raises before anything is written."""
    differentiable = optimizer.defaults["differentiable"]
    fused_work, torch_work = [], []
    check = not torch.compiler.is_compiling()  # the kernels check again; tracing skips these
    for gi, group in enumerate(optimizer.param_groups):
        hyper = group_hyper(group, gi)
        mine, theirs = _FusedGroup(group, hyper), _TorchGroup(group)
        with_momentum = hyper.momentum != 0
        for pi, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            state = optimizer.state.get(p)
            buf = None if state is None or not with_momentum else state.get("momentum_buffer")
            where = _where(gi, pi)
            if group["fused"]:
                _device_dtype_check_for_fused(p)  # torch's own condition and message
            if buf is not None and not isinstance(buf, Tensor):
                raise TypeError(f"{where}: its momentum buffer is a {type(buf).__name__}, "
                                "not a tensor")
            if differentiable or g.is_sparse or (buf is not None and buf.is_sparse):
                # What torch's step would refuse part-way, refused here before any write, with
                # torch's messages.
                if group["fused"] and not differentiable:
                    raise RuntimeError("`_fused_sgd` does not support sparse gradients")
                if g.is_sparse and hyper.weight_decay != 0:
                    raise RuntimeError(
                        "add(sparse, dense) is not supported. Use add(dense, sparse) instead."
                    )
                if differentiable and torch.is_grad_enabled() and p.is_leaf and p.requires_grad:
                    raise RuntimeError(
                        "a leaf Variable that requires grad is being used in an in-place "
                        "operation."
                    )
                if check and g.shape != p.shape:
                    raise RuntimeError(f"{where}: its gradient has shape {list(g.shape)} but the "
                                       f"parameter has shape {list(p.shape)}")
                theirs.params.append(p)
                theirs.grads.append(g)
                theirs.buffers.append(buf)
                continue
            if check:
                if p.dtype not in _SUPPORTED_DTYPES:
                    raise RuntimeError(f"{where} has dtype {p.dtype}; supported are float32, "
                                       "float64, float16, bfloat16 and complex types")
                _check_like(g, p, "gradient", where)
                if buf is not None:
                    _check_like(buf, p, "momentum buffer", where)
                shared = _overlaps(p) or (buf is not None and _overlaps(buf))
                if shared or (scaled and _overlaps(g)):
                    raise RuntimeError(f"{where}: the parameter, its gradient or its momentum "
                                       "buffer has elements that share memory (e.g. an expanded "
                                       "tensor) and cannot be updated in place")
                if p.dtype in _REDUCED:
                    _check_alphas(hyper, p.dtype, gi)
            mine.params.append(p)
            mine.grads.append(g)
            mine.buffers.append(buf)
        if mine.params:
            fused_work.append(mine)
        if theirs.params:
            torch_work.append(theirs)
    if scaled and torch_work:
        raise RuntimeError(
            "torchext.optim.SGD: a grad_scale/found_inf was set on the optimizer, but some "
            "parameters are stepped by torch's implementation (sparse gradients or "
            "differentiable=True), which takes none; let torch.amp.GradScaler unscale (it does "
            "so by itself for such steps)"
        )
    return StepPlan(optimizer.state, fused_work, torch_work)


def _per_device(t: Tensor | None, moved: dict, name: str, device: torch.device):
    """``t`` on ``device``, moved once per step (GradScaler keeps its tensors on one device)."""
    if t is None:
        return None
    cache = moved.setdefault(name, {})
    if device not in cache:
        cache[device] = t.to(device)
    return cache[device]


def _as_real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _select(items: list, indices) -> list:
    """``items`` at ``indices``; ``items`` itself when the indices are all of them, in order."""
    return items if len(indices) == len(items) else [items[i] for i in indices]


def _run_fused(work: _FusedGroup, grad_scale, found_inf, moved) -> list:
    """Steps one group with one fused call per (device, dtype) bucket; returns new buffers."""
    hyper, params, grads = work.hyper, work.params, work.grads
    with_momentum = hyper.momentum != 0
    is_first_step = [b is None for b in work.buffers] if with_momentum else []
    buffers = []
    if with_momentum:
        buffers = [torch.empty_like(p) if b is None else b for p, b in zip(params, work.buffers)]
    lists = [params, grads] + ([buffers] if with_momentum else [])
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) == 1 and not params[0].is_complex() and not torch.compiler.is_compiling():
        # The usual case, one bucket: skip the general grouping (several microseconds).
        ((device, _),) = kinds
        buckets = {(device, None): (lists, range(len(params)))}
    else:
        if any(p.is_complex() for p in params):  # stepped as (..., 2) real views
            lists = [[_as_real(t) for t in ts] for ts in lists]
        buckets = Optimizer._group_tensors_by_device_and_dtype(lists, with_indices=True)
    for (device, _), (tensors, indices) in buckets.items():
        lr = hyper.lr
        if isinstance(lr, Tensor) and lr.device != device and lr.device.type != "cpu":
            lr = _per_device(lr, moved, "lr", device)
        ops.fused_sgd_(
            tensors[0],
            tensors[1],
            tensors[2] if with_momentum else [],
            _select(is_first_step, indices) if with_momentum else [],
            lr=lr,
            momentum=hyper.momentum,
            dampening=hyper.dampening,
            weight_decay=hyper.weight_decay,
            nesterov=hyper.nesterov,
            maximize=hyper.maximize,
            grad_scale=_per_device(grad_scale, moved, "grad_scale", device),
            found_inf=_per_device(found_inf, moved, "found_inf", device),
        )
    return [(p, b) for p, b, first in zip(params, buffers, is_first_step) if first]


def _run_torch(work: _TorchGroup) -> None:
    """torch.optim.SGD's own step of these parameters (it fills work.buffers in place)."""
    group = work.group
    torch_sgd(
        work.params,
        work.grads,
        work.buffers,
        has_sparse_grad=any(g.is_sparse for g in work.grads),
        foreach=group["foreach"],
        fused=group["fused"],
        weight_decay=group["weight_decay"],
        momentum=group["momentum"],
        lr=group["lr"],
        dampening=group["dampening"],
        nesterov=group["nesterov"],
        maximize=group["maximize"],
    )
