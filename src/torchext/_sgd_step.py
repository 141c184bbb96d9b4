"""One step of torchext.optim.SGD: plan and check everything, then write.

A step touches several parameter groups, and within a group one ``torchext.fused_sgd_`` call per
(device, dtype) bucket. Each call checks its own arguments before it writes, but a bad gradient
in a later call would be found after earlier calls had written. So :func:`plan` first walks every
group — hyper-parameters, momentum buffers, the ``fused=True`` conditions — and raises, with the
group and parameter named, before anything is written; :meth:`StepPlan.run` then makes the calls
and stores new momentum buffers last. A step of several calls hands them to C++ together
(``_C.fused_sgd_calls_``), which checks every tensor of every call before the first writes; if it
refuses, :meth:`StepPlan.check` names the group and parameter. Where Python-level dispatch must
see the calls (``torch.compile``, tensor subclasses), they are made one by one, after the same
checks in Python.

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

from . import _C, ops

_SUPPORTED_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.complex64, torch.complex128, torch.complex32,
)
_REDUCED = {torch.float16: "Half", torch.bfloat16: "BFloat16"}
_has_torch_function = torch._C._has_torch_function


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
    lr, momentum, dampening, weight_decay = (
        group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
    )
    if all(type(v) in (float, int) for v in (lr, momentum, dampening, weight_decay)):
        # Plain numbers (the usual case): nothing to convert.
        return Hyper(lr, momentum, dampening, weight_decay, bool(group["nesterov"]),
                     bool(group["maximize"]))
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


class _FusedGroup:
    """The parameters of one group that the fused op steps (built on every step: kept lean)."""

    __slots__ = ("group", "index", "hyper", "params", "grads", "buffers", "indices", "kinds")

    def __init__(self, group: dict, index: int, hyper: Hyper) -> None:
        self.group, self.index, self.hyper = group, index, hyper  # index: in param_groups
        self.params, self.grads, self.buffers = [], [], []  # buffers: None on a first step
        self.indices = []  # of the params in the group
        self.kinds = set()  # (device, dtype) buckets


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
    scaled: bool
    batched: bool = False  # the fused calls go to C++ together (checked there first)

    def check(self) -> None:
        """Raises, naming the parameter, for anything the fused op would refuse."""
        for work in self.fused:
            _check_fused(work, self.scaled)

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
        try:
            if self.batched:
                calls = []
                for work in self.fused:
                    new_buffers += _fused_calls(work, grad_scale, found_inf, moved, calls)
                _C.fused_sgd_calls_(calls)
            else:
                for work in self.fused:
                    calls = []
                    new_buffers += _fused_calls(work, grad_scale, found_inf, moved, calls)
                    for call in calls:
                        ops.fused_sgd_(*call[:4], lr=call[4], momentum=call[5],
                                       dampening=call[6], weight_decay=call[7],
                                       nesterov=call[8], maximize=call[9],
                                       grad_scale=call[10], found_inf=call[11])
        except RuntimeError:
            # A kernel refused its call before writing (with several calls, none has written):
            # name the parameter if the step's checks can, else the kernel's words.
            self.check()
            raise
        # Only now, after every call was accepted, do buffers enter the state.
        for p, b in new_buffers:
            self.state[p]["momentum_buffer"] = b


def plan(optimizer: Optimizer, scaled: bool) -> StepPlan:
    """Sorts every group's parameters, checking what decides where they go.

    The tensors themselves (shapes, dtypes, devices, layouts, overlap) are checked by
    :meth:`StepPlan.check` — here when the step makes more than one call, since an earlier call
    would write before a later one refused; a single fused call checks its arguments itself
    before writing, and :meth:`StepPlan.run` explains a refusal with the same checks.
    """
    differentiable = optimizer.defaults["differentiable"]
    fused_work, torch_work = [], []
    for gi, group in enumerate(optimizer.param_groups):
        hyper = group_hyper(group, gi)
        mine, theirs = _FusedGroup(group, gi, hyper), None
        with_momentum = hyper.momentum != 0
        fused = group["fused"]
        for pi, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            buf = None
            if with_momentum:
                state = optimizer.state.get(p)
                buf = None if state is None else state.get("momentum_buffer")
                if buf is not None and not isinstance(buf, Tensor):
                    raise TypeError(f"{_where(gi, pi)}: its momentum buffer is a "
                                    f"{type(buf).__name__}, not a tensor")
            if fused:
                _device_dtype_check_for_fused(p)  # torch's own condition and message
            if differentiable or g.is_sparse or (buf is not None and buf.is_sparse):
                _check_torch_stepped(p, g, hyper, fused, differentiable, _where(gi, pi))
                theirs = theirs or _TorchGroup(group)
                theirs.params.append(p)
                theirs.grads.append(g)
                theirs.buffers.append(buf)
                continue
            mine.params.append(p)
            mine.grads.append(g)
            mine.buffers.append(buf)
            mine.indices.append(pi)
            mine.kinds.add((p.device, p.dtype))
        if mine.params:
            fused_work.append(mine)
        if theirs is not None:
            torch_work.append(theirs)
    if scaled and torch_work:
        raise RuntimeError(
            "torchext.optim.SGD: a grad_scale/found_inf was set on the optimizer, but some "
            "parameters are stepped by torch's implementation (sparse gradients or "
            "differentiable=True), which takes none; let torch.amp.GradScaler unscale (it does "
            "so by itself for such steps)"
        )
    step = StepPlan(optimizer.state, fused_work, torch_work, scaled)
    calls = len(torch_work) + sum(len(work.kinds) for work in fused_work)
    if calls > 1 and not torch.compiler.is_compiling():  # the kernels check again when traced
        if torch_work or not _direct(fused_work):
            step.check()
        else:
            step.batched = True
    return step


def _direct(fused_work: list) -> bool:
    """Whether no Python-level dispatch has to see the fused calls (see ops.fused_sgd_)."""
    return not any(
        _has_torch_function(work.params) or _has_torch_function(work.grads)
        or _has_torch_function([b for b in work.buffers if b is not None])
        or _has_torch_function([work.hyper.lr] if isinstance(work.hyper.lr, Tensor) else [])
        for work in fused_work
    )


def _check_torch_stepped(p, g, hyper, fused, differentiable, where):
    # What torch's step would refuse part-way, refused before any write, with torch's messages.
    if fused and not differentiable:
        raise RuntimeError("`_fused_sgd` does not support sparse gradients")
    if g.is_sparse and hyper.weight_decay != 0:
        raise RuntimeError("add(sparse, dense) is not supported. Use add(dense, sparse) instead.")
    if differentiable and torch.is_grad_enabled() and p.is_leaf and p.requires_grad:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation."
        )
    if g.shape != p.shape:
        raise RuntimeError(f"{where}: its gradient has shape {list(g.shape)} but the parameter "
                           f"has shape {list(p.shape)}")


def _check_fused(work: _FusedGroup, scaled: bool) -> None:
    """Everything the fused op would refuse in this group's tensors, named by parameter."""
    strided = torch.strided
    for p, g, buf, pi in zip(work.params, work.grads, work.buffers, work.indices):
        dtype, shape, device = p.dtype, p.shape, p.device
        if dtype not in _SUPPORTED_DTYPES:
            raise RuntimeError(f"{_where(work.index, pi)} has dtype {dtype}; supported are "
                               "float32, float64, float16, bfloat16 and complex types")
        for t, what in ((g, "gradient"), (buf, "momentum buffer")):
            if t is not None and (t.layout is not strided or t.shape != shape
                                  or t.dtype != dtype or t.device != device):
                _check_like(t, p, what, _where(work.index, pi))
        shared = _overlaps(p) or (buf is not None and _overlaps(buf))
        if shared or (scaled and _overlaps(g)):
            raise RuntimeError(f"{_where(work.index, pi)}: the parameter, its gradient or its "
                               "momentum buffer has elements that share memory (e.g. an "
                               "expanded tensor) and cannot be updated in place")
        if dtype in _REDUCED:
            _check_alphas(work.hyper, dtype, work.index)


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


def _fused_calls(work: _FusedGroup, grad_scale, found_inf, moved, calls: list) -> list:
    """Appends one group's fused_sgd_ calls (one per (device, dtype) bucket, as tuples of the
    op's positional arguments) to ``calls``; returns the buffers they create."""
    hyper, params, grads = work.hyper, work.params, work.grads
    with_momentum = hyper.momentum != 0
    is_first_step = [b is None for b in work.buffers] if with_momentum else []
    buffers = []
    if with_momentum:
        buffers = [torch.empty_like(p) if b is None else b for p, b in zip(params, work.buffers)]
    lists = [params, grads] + ([buffers] if with_momentum else [])
    kinds = work.kinds
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
        calls.append((
            tensors[0],
            tensors[1],
            tensors[2] if with_momentum else [],
            _select(is_first_step, indices) if with_momentum else [],
            lr,
            hyper.momentum,
            hyper.dampening,
            hyper.weight_decay,
            hyper.nesterov,
            hyper.maximize,
            _per_device(grad_scale, moved, "grad_scale", device),
            _per_device(found_inf, moved, "found_inf", device),
        ))
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
