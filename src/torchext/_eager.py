"""The Trainer's eager loop: the stock ``zero_grad → forward → loss → backward → step`` in Python.

Used for models and optimizers the C++ core does not run (and when optimizer step hooks are
registered). It keeps the core's guarantees where Python allows: ``fit`` checks each loss before
its update, and an optimizer step and the step count it adds are made atomic with respect to
Ctrl-C (the signal is held back for the few lines between them, then delivered). A mixed
precision runs the forward and the loss under ``torch.autocast`` and, for ``"16-mixed"``, the
backward and the step through the trainer's ``torch.amp.GradScaler``, as the stock loop does.
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


def _forward_backward(trainer, x, y):
    trainer.optimizer.zero_grad()
    with autocast(trainer.precision, x.device):
        loss = trainer.loss_fn(trainer.model(x), y)
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


def eager_fit(trainer, x, y, epochs, batch_size, shuffle, generator, callback):
    """``Trainer.fit`` eagerly: each loss is checked before its update."""
    samples = x.shape[0]
    steps_per_epoch = math.ceil(samples / batch_size)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(samples, generator=generator).to(x.device) if shuffle else None
        total = 0.0
        for step in range(steps_per_epoch):
            rows = slice(step * batch_size, min(samples, (step + 1) * batch_size))
            index = order[rows] if shuffle else rows
            loss = _forward_backward(trainer, x[index], y[index]).item()
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
    samples = x.shape[0]
    batch = batch_size or samples
    total = 0.0
    with torch.no_grad(), autocast(trainer.precision, x.device):
        for start in range(0, samples, batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            total += trainer.loss_fn(trainer.model(xb), yb).item() * xb.shape[0]
    return total / samples
