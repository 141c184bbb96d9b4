"""``torchext.Trainer``: the whole training step in one C++ call.

``Trainer(model, optimizer, loss)`` runs zero-grad → forward → loss → backward
→ SGD update in the C++ core (``torchext._C.TrainerCore``) when the model is a
chain of dense layers (see ``torchext._chain``) trained by ``torchext.optim.SGD``
or ``torch.optim.SGD``, in float32 or float64. Anything else runs the same loop
eagerly in Python, with the same API. ``trainer.backend`` says which:
``"cpu"``, ``"cuda"`` or ``"eager"``.

The model's own parameters are trained in place and the momentum buffers live
in ``optimizer.state``; hyper-parameters are read from ``optimizer.param_groups``
at every call. So after any call, ``model.state_dict()`` and
``optimizer.state_dict()`` are current, LR schedulers work, and a hand-written
loop can take over (or hand back) at any step with the same numbers.
"""

import math
import os
import sys
import tempfile
from typing import Callable, List, Optional, Union

import torch
from torch import nn
from torch.optim import optimizer as _optimizer_module

from . import _C, __version__
from ._chain import extract_chain
from .optim import SGD as TorchextSGD

__all__ = ["Trainer"]

_LOSSES = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss}
_CHECKPOINT_KEYS = ("model", "optimizer", "step")


def _loss_name(loss) -> Optional[str]:
    """"mse"/"cross_entropy" for the losses the core computes, else None."""
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected 'mse' or 'cross_entropy', "
                             "or a loss module")
        return loss
    if type(loss) is nn.MSELoss and loss.reduction == "mean":
        return "mse"
    if (type(loss) is nn.CrossEntropyLoss and loss.reduction == "mean" and loss.weight is None
            and loss.label_smoothing == 0.0 and loss.ignore_index == -100):
        return "cross_entropy"
    return None


def _is_sgd(optimizer) -> bool:
    return type(optimizer) in (torch.optim.SGD, TorchextSGD) and not any(
        g.get("differentiable", False) for g in optimizer.param_groups
    )


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``loss``; see the module docstring.

    Args:
        model: an ``nn.Module``. Chains of Linear layers and activations (e.g.
            :class:`torchext.nn.MLP`) run on the C++ core; other models eagerly.
        optimizer: an optimizer over the model's parameters (it must own all of
            them). ``torchext.optim.SGD`` and ``torch.optim.SGD`` run on the core.
        loss: ``"mse"``, ``"cross_entropy"`` (class-index targets), or a loss
            module; ``nn.MSELoss()``/``nn.CrossEntropyLoss()`` with default
            settings run on the core, any other module eagerly.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss: Union[str, nn.Module] = "mse") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in model.named_parameters()
                   if p.requires_grad and id(p) not in owned]
        if missing:
            raise ValueError("the optimizer does not own the model's parameters: "
                             f"{', '.join(missing)} are not in any of its param groups")
        self.model = model
        self.optimizer = optimizer
        name = _loss_name(loss)
        self.loss_fn = _LOSSES[name]() if isinstance(loss, str) else loss
        self.steps = 0
        self._core = None
        self._params: List[torch.Tensor] = []
        layers = extract_chain(model)
        if layers is not None and name is not None and _is_sgd(optimizer):
            params = [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]
            if (all(p.requires_grad and p.is_contiguous() for p in params)
                    and params[0].dtype in (torch.float32, torch.float64)
                    and params[0].device.type in ("cpu", "cuda")
                    and len({(p.device, p.dtype) for p in params}) == 1):
                self._core = _C.TrainerCore([layer.weight for layer in layers],
                                            [layer.bias for layer in layers],
                                            [layer.activation for layer in layers], name)
                self._params = params
        self._index = {id(p): i for i, p in enumerate(self._params)}

    @property
    def backend(self) -> str:
        """Where steps run: ``"cpu"`` or ``"cuda"`` (the C++ core), or ``"eager"``."""
        return self._core.backend if self._core is not None else "eager"

    def __repr__(self) -> str:
        return (f"Trainer(backend={self.backend!r}, model={type(self.model).__name__}, "
                f"optimizer={type(self.optimizer).__name__}, loss={self.loss_fn!r})")

    # ------------------------------------------------------------------ core plumbing

    def _uses_core(self) -> bool:
        # Step hooks belong to optimizer.step(); with any registered, run that.
        opt = self.optimizer
        return self._core is not None and not (
            opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
            or _optimizer_module._global_optimizer_pre_hooks
            or _optimizer_module._global_optimizer_post_hooks)

    def _group_specs(self):
        """Hyper-parameters and momentum buffers of every group, as the core takes them."""
        specs, group_params = [], []
        state = self.optimizer.state
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in self._index]
            momentum = group["momentum"]
            buffers = []
            if momentum != 0:
                for p in params:
                    param_state = state.get(p)
                    buffers.append(None if param_state is None
                                   else param_state.get("momentum_buffer"))
            lr = group["lr"]
            specs.append((float(lr), momentum, group["dampening"], group["weight_decay"],
                          group["nesterov"], group["maximize"],
                          [self._index[id(p)] for p in params], buffers))
            group_params.append(params)
        return specs, group_params

    def _after_core_update(self, created, group_params) -> None:
        """Stores the momentum buffers the core created into the optimizer's state."""
        for group, position, buffer in created:
            self.optimizer.state[group_params[group][position]]["momentum_buffer"] = buffer
        # What optimizer.step() would have flagged: LR schedulers check it to warn
        # about calling scheduler.step() before any optimizer step.
        self.optimizer._opt_called = True

    # ------------------------------------------------------------------ training

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on the batch ``(x, y)``; returns the loss (0-dim tensor).

        The loss is the one computed before the update, as in the stock loop.
        """
        if self._uses_core():
            specs, group_params = self._group_specs()
            loss, created = self._core.step(x, y, specs)
            self._after_core_update(created, group_params)
        else:
            loss = self._eager_step(x, y)
        self.steps += 1
        return loss

    def _eager_step(self, x, y):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, batch_size: int = 128,
            shuffle: bool = True, generator: Optional[torch.Generator] = None,
            progress: Union[None, bool, Callable] = None) -> List[float]:
        """Trains for whole epochs over ``(x, y)``; returns the mean loss of each epoch.

        Each epoch draws ``torch.randperm(len(x), generator=generator)`` (when
        ``shuffle``) and steps over minibatches of ``batch_size`` rows in that order;
        the last may be short. The epoch's loss is the mean over its samples.

        ``progress``: ``True`` for a progress bar (tqdm), ``False`` for none, ``None``
        for a bar when stderr is a terminal, or a callable
        ``progress(epoch, step, steps_per_epoch, mean_loss)`` called now and then.
        A non-finite loss stops training with an error naming the epoch and step.
        """
        samples = self._check_data(x, y, "fit")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        steps_per_epoch = math.ceil(samples / batch_size)
        callback, close = _progress_callback(progress, epochs, steps_per_epoch)
        try:
            if self._uses_core():
                specs, group_params = self._group_specs()
                losses, created = self._core.fit(x, y, specs, epochs, batch_size, shuffle,
                                                 generator, callback)
                self._after_core_update(created, group_params)
                self.steps += epochs * steps_per_epoch
                return losses
            return self._eager_fit(x, y, epochs, batch_size, shuffle, generator, callback)
        finally:
            close()

    def _eager_fit(self, x, y, epochs, batch_size, shuffle, generator, callback):
        samples = x.shape[0]
        steps_per_epoch = math.ceil(samples / batch_size)
        losses = []
        for epoch in range(epochs):
            order = torch.randperm(samples, generator=generator).to(x.device) if shuffle else None
            total = 0.0
            for step in range(steps_per_epoch):
                rows = slice(step * batch_size, min(samples, (step + 1) * batch_size))
                index = order[rows] if shuffle else rows
                loss = self.step(x[index], y[index]).item()
                if not math.isfinite(loss):
                    raise RuntimeError(f"torchext.Trainer.fit: the loss became {loss} at epoch "
                                       f"{epoch}, step {step}; training stopped (lower the "
                                       "learning rate or check the data)")
                total += loss * (rows.stop - rows.start)
                if callback is not None:
                    callback(epoch, step + 1, steps_per_epoch, total / rows.stop)
            losses.append(total / samples)
        return losses

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int] = None) -> float:
        """Mean loss over ``(x, y)`` without training, in batches of ``batch_size`` rows."""
        samples = self._check_data(x, y, "evaluate")
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self._core is not None:
            return self._core.evaluate(x, y, batch_size or 0)
        batch = batch_size or samples
        total = 0.0
        with torch.no_grad():
            for start in range(0, samples, batch):
                xb, yb = x[start:start + batch], y[start:start + batch]
                total += self.loss_fn(self.model(xb), yb).item() * xb.shape[0]
        return total / samples

    @staticmethod
    def _check_data(x, y, who) -> int:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"Trainer.{who}: x and y must be tensors")
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"Trainer.{who}: x and y need a leading sample dimension")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"Trainer.{who}: x has {x.shape[0]} samples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"Trainer.{who}: the data is empty (0 samples)")
        return x.shape[0]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """``{"model", "optimizer", "step", "torchext_version"}``: plain, torch.load-safe."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.steps, "torchext_version": __version__}

    def load_state_dict(self, state: dict) -> None:
        """Restores model, optimizer and step count; on a bad state nothing changes."""
        missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"not a torchext.Trainer checkpoint: missing {', '.join(missing)}")
        self._check_model_state(state["model"])
        # Optimizer.load_state_dict validates the groups before it changes anything;
        # the model state was checked above, so neither load can fail half-way.
        self.optimizer.load_state_dict(state["optimizer"])
        self.model.load_state_dict(state["model"])
        self.steps = int(state["step"])

    def _check_model_state(self, model_state) -> None:
        current = self.model.state_dict()
        if set(model_state) != set(current):
            raise ValueError(
                "checkpoint does not match the model: missing "
                f"{sorted(set(current) - set(model_state))}, unexpected "
                f"{sorted(set(model_state) - set(current))}")
        for key, value in current.items():
            saved = model_state[key]
            if not isinstance(saved, torch.Tensor) or saved.shape != value.shape:
                raise ValueError(f"checkpoint does not match the model: {key} has shape "
                                 f"{tuple(getattr(saved, 'shape', ()))}, the model's is "
                                 f"{tuple(value.shape)}")

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes :meth:`state_dict` with ``torch.save``, atomically (temp file, then rename)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".torchext-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load(self, path: Union[str, os.PathLike]) -> None:
        """Loads a checkpoint written by :meth:`save` (``torch.load``, ``weights_only``)."""
        device = next(self.model.parameters()).device
        self.load_state_dict(torch.load(os.fspath(path), map_location=device, weights_only=True))


def _progress_callback(progress, epochs, steps_per_epoch):
    """(callback or None, close function) for fit's ``progress`` argument."""
    if callable(progress) and not isinstance(progress, bool):
        return progress, lambda: None
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress is True:
            raise ImportError("Trainer.fit(progress=True) needs tqdm: pip install tqdm") from None
        return None, lambda: None
    bar = tqdm(total=epochs * steps_per_epoch, unit="step", leave=False)

    def update(epoch, step, steps, mean_loss):
        bar.n = epoch * steps + step
        if not math.isnan(mean_loss):
            bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4g}", refresh=False)
        bar.refresh()

    return update, bar.close
