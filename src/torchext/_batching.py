"""vmap rules (batching rules) of torchext.linear and torchext.linear_backward.

``torch.vmap`` calls a rule with the unwrapped arguments and, for each, the dimension being
vmapped over (or None); the rule returns the batched result and its batch dimension. These
rules make ``vmap``, ``jacrev``/``jacfwd``/``hessian`` (vmap over vjp/jvp) and per-sample
gradients (``vmap(grad(...))``) run batched, with no per-sample loop and no fallback warning.

Shape legend: B the vmapped (batch) size, N the flattened leading dims of one sample, I
in_features, O out_features. A batch of inputs under shared weights is one bigger linear call
(B joins the leading dims). Per-sample weights (model ensembles) and per-sample weight gradients
need B separate products: those are batched matrix multiplies (``torch.matmul``), the
computation ``torch.nn.functional.linear`` does under vmap.
"""

from typing import Optional

import torch
from torch import Tensor

from . import ops
from ._fake import check_linear_args, check_linear_backward_args


def _one_sample(t: Optional[Tensor], bdim: Optional[int]) -> Optional[Tensor]:
    """A tensor with the metadata of one sample of ``t`` (for the op's argument checks)."""
    if t is None or bdim is None:
        return t
    if t.shape[bdim] > 0:
        return t.select(bdim, 0)
    return t.new_empty(t.shape[:bdim] + t.shape[bdim + 1:])


def _batch_first(t: Tensor, bdim: Optional[int], batch_size: int) -> Tensor:
    """``t`` with the batch dimension first, expanded (not copied) when ``t`` is not batched."""
    if bdim is None:
        return t.expand(batch_size, *t.shape)
    return t.movedim(bdim, 0)


def _broadcast_over_samples(t: Tensor, dims_of_one_output: int) -> Tensor:
    """A batched [B, O] tensor viewed as [B, 1, ..., 1, O] against batched outputs of one sample."""
    return t.view(t.shape[0], *([1] * (dims_of_one_output - 1)), t.shape[-1])


def _linear_rule(info, in_dims, input, weight, bias=None):
    # The dispatcher leaves a defaulted bias out of the call, and its in_dims entry with it.
    x_bdim, w_bdim, b_bdim = (*in_dims, None)[:3]
    check_linear_args(
        _one_sample(input, x_bdim), _one_sample(weight, w_bdim), _one_sample(bias, b_bdim)
    )
    size = info.batch_size
    if w_bdim is None:
        if b_bdim is None:  # only the input is batched: one linear call with B as a leading dim
            return ops.linear(input.movedim(x_bdim, 0), weight, bias), 0
        x = _batch_first(input, x_bdim, size)  # [B, *, I]
        out = ops.linear(x, weight)  # [B, *, O]
        return out + _broadcast_over_samples(bias.movedim(b_bdim, 0), out.dim() - 1), 0
    # Per-sample weights: B products [N, I]·[I, O].
    x = _batch_first(input, x_bdim, size)  # [B, *, I]
    w = weight.movedim(w_bdim, 0)  # [B, O, I]
    out = torch.matmul(x.reshape(size, -1, x.shape[-1]), w.transpose(1, 2))  # [B, N, O]
    if bias is not None:
        b = _batch_first(bias, b_bdim, size)  # [B, O]
        out = out + b.unsqueeze(1)
    return out.reshape(*x.shape[:-1], w.shape[1]), 0


def _linear_backward_rule(info, in_dims, grad_output, input, weight, output_mask):
    go_bdim, x_bdim, w_bdim, _ = in_dims
    one_go, one_x, one_w = (
        _one_sample(grad_output, go_bdim), _one_sample(input, x_bdim), _one_sample(weight, w_bdim)
    )
    check_linear_backward_args(one_go, one_x, one_w)
    size = info.batch_size
    # Which gradients differ between samples: gX depends on (gY, W), gW on (gY, X), gb on gY.
    batched = [
        output_mask[0] and (go_bdim is not None or w_bdim is not None),
        output_mask[1] and (go_bdim is not None or x_bdim is not None),
        output_mask[2] and go_bdim is not None,
    ]
    shared = [m and not b for m, b in zip(output_mask, batched)]
    grads = [None, None, None]
    if any(shared):  # the same for every sample: one unbatched call
        grads = list(ops.linear_backward(one_go, one_x, one_w, shared))
    go = _batch_first(grad_output, go_bdim, size).reshape(size, -1, grad_output.shape[-1])
    if batched[0]:  # gX = gY·W: [B, N, O]·[O, I] or [B, N, O]·[B, O, I]
        w = weight if w_bdim is None else weight.movedim(w_bdim, 0)
        grad_input = ops.linear(go, w.t()) if w_bdim is None else torch.matmul(go, w)
        grads[0] = grad_input.reshape(size, *one_x.shape)
    if batched[1]:  # gW = gYᵀ·X per sample: [B, O, N]·[B, N, I]
        x = _batch_first(input, x_bdim, size).reshape(size, -1, one_x.shape[-1])
        grads[1] = torch.matmul(go.transpose(1, 2), x)
    if batched[2]:  # gb = Σ gY over the rows of each sample
        grads[2] = go.sum(1)
    return tuple(grads), tuple(0 if b else None for b in batched)


torch.library.register_vmap("torchext::linear", _linear_rule)
torch.library.register_vmap("torchext::linear_backward", _linear_backward_rule)
