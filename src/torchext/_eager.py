"""The Trainer's eager loop: the stock ``zero_grad → forward → loss → backward → step`` in Python.

Used for models and optimizers the C++ core does not run (and when optimizer step hooks are
registered). It keeps the core's guarantees where Python allows: ``fit`` checks each loss before
its update, and an optimizer step and the step count it adds are made atomic with respect to
Ctrl-C (the signal is held back for the few lines between them, then delivered). A mixed
precision runs the forward and the loss under ``torch.autocast`` and, for ``"16-mixed"``, the
backward and the step through the trainer's ``torch.amp.GradScaler``, as the stock loop does.

Data-parallel (``trainer._dp``), the step is the stock DDP step (the forward runs the
DistributedDataParallel module, whose backward all-reduces the gradients), ``fit`` takes
DistributedSampler's shards and checks the mean loss over the ranks (so all stop at the same
step), and the losses it returns, like ``evaluate``'s, are means over every rank's samples.
"""

import contextlib
import math
import signal
import threading

import torch

from ._mixed import autocast

__all__ = ["signals_deferred", "eager_step", "eager_fit", "eager_evaluate"]


@contextlib.contextmanager
def signals_deferred():
    """Holds SIGINT back during the block, then delivers it (main thread; Python handler set)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(signal.SIGINT, caught[-1])


def _forward_model(trainer):
    return trainer.model if trainer._dp is None else trainer._dp.eager_model()


def _forward_backward(trainer, x, y):
    trainer.optimizer.zero_grad()
    with autocast(trainer.precision, x.device):
        loss = trainer.loss_fn(_forward_model(trainer)(x), y)
    (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()
    return loss.detach()


def _update(trainer):
    with signals_deferred():
        if trainer.scaler is not None:
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
        else:
            trainer.optimizer.step()
        trainer._count_step()


def eager_step(trainer, x, y):
    """One stock step; returns the loss (computed before the update)."""
    loss = _forward_backward(trainer, x, y)
    _update(trainer)
    return loss


def _epoch_orders(trainer, samples, shuffle, generator, seed, start_epoch, device):
    """order_of(epoch): the epoch's sample indices (None: 0, 1, ... in turn)."""
    dp = trainer._dp
    if dp is not None or seed is not None:
        if generator is not None:
            raise ValueError("torchext.Trainer.fit: data-parallel, each epoch's order is "
                             "DistributedSampler's; pass seed (and start_epoch), not a generator"
                             if dp is not None else
                             "torchext.Trainer.fit: pass either a generator or a seed, not both")
        if dp is None:
            if not shuffle:
                return lambda epoch: None
            return lambda epoch: torch.randperm(
                samples, generator=torch.Generator().manual_seed(seed + start_epoch + epoch)
            ).to(device)
        return lambda epoch: dp.shard(samples, shuffle, seed or 0, start_epoch + epoch, device)
    if not shuffle:
        return lambda epoch: None
    return lambda epoch: torch.randperm(samples, generator=generator).to(device)


def eager_fit(trainer, x, y, epochs, batch_size, shuffle, generator, callback, seed=None,
              start_epoch=0):
    """``Trainer.fit`` eagerly: each loss is checked before its update."""
    dp = trainer._dp
    order_of = _epoch_orders(trainer, x.shape[0], shuffle, generator, seed, start_epoch, x.device)
    samples = x.shape[0] if dp is None else dp.samples_per_rank(x.shape[0])
    steps_per_epoch = math.ceil(samples / batch_size)
    losses = []
    for epoch in range(epochs):
        order = order_of(epoch)
        total = 0.0
        for step in range(steps_per_epoch):
            rows = slice(step * batch_size, min(samples, (step + 1) * batch_size))
            index = rows if order is None else order[rows]
            loss = _forward_backward(trainer, x[index], y[index]).item()
            if dp is not None:  # the mean over the ranks: every rank decides alike
                loss = dp.all_reduce_sum([loss], "torchext.Trainer.fit",
                                         "all-reduce of the step's loss")[0] / dp.world_size
            if not math.isfinite(loss):
                raise RuntimeError(f"torchext.Trainer.fit: the loss became {loss} at epoch "
                                   f"{epoch}, step {step}; training stopped before that step's "
                                   "update (lower the learning rate or check the data)")
            _update(trainer)
            total += loss * (rows.stop - rows.start)
            if callback is not None:
                callback(epoch, step + 1, steps_per_epoch, total / rows.stop)
        losses.append(total / samples)
    return losses


def eager_evaluate(trainer, x, y, batch_size):
    dp = trainer._dp
    start, stop = (0, x.shape[0]) if dp is None else dp.part(x.shape[0])
    batch = batch_size or max(stop - start, 1)
    total = 0.0
    with torch.no_grad(), autocast(trainer.precision, x.device):
        for begin in range(start, stop, batch):
            xb, yb = x[begin:min(stop, begin + batch)], y[begin:min(stop, begin + batch)]
            total += trainer.loss_fn(trainer._module(xb), yb).item() * xb.shape[0]
    if dp is not None:
        total = dp.all_reduce_sum([total], "torchext.Trainer.evaluate",
                                  "all-reduce of the evaluation loss")[0]
    return total / x.shape[0]
