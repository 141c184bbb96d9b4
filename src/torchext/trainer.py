"""``torchext.Trainer``: the whole training step in one C++ call.

``Trainer(model, optimizer, loss)`` runs zero-grad → forward → loss → backward → SGD update in the
C++ core (``torchext._C.TrainerCore``) when the model is a chain of dense layers (see
``torchext._chain``) trained by ``torchext.optim.SGD`` or ``torch.optim.SGD``, in float32 or
float64. Anything else runs the same loop eagerly in Python (``torchext._eager``), with the same
API. ``trainer.backend`` says which: ``"cpu"``, ``"cuda"`` or ``"eager"``.

``precision="bf16-mixed"`` or ``"16-mixed"`` trains a float32 model in mixed precision, as the stock
loop under ``torch.autocast`` (with ``torch.amp.GradScaler`` for float16) does; see
``torchext._mixed``.

State flows one way. The model's own parameters are trained in place, re-checked at every call
(replaced Parameters are an error; shapes, dtypes and devices changed in place are picked up; a
parameter with ``requires_grad`` off is frozen, as in the stock loop). Hyper-parameters are read
from ``optimizer.param_groups`` at every call, and momentum buffers live in ``optimizer.state``,
created there right before the update that first writes them. ``trainer.steps`` counts the
updates applied. So after any call — or any exception, from a bad argument, a callback, Ctrl-C or
a non-finite loss — ``model.state_dict()``, ``optimizer.state_dict()`` and ``trainer.steps``
agree with each other, LR schedulers work, and a hand-written loop can take over at any step.

Calls on one Trainer are serialised by a lock in the C++ core: a call from a second thread waits
until the running one returns; a call from inside ``fit``'s own progress callback is refused,
except ``state_dict`` and ``save``.

Data-parallel (``torch.distributed``): a model wrapped in ``DistributedDataParallel``, or any
model with ``process_group=``, is one replica per rank (see ``torchext._distributed``). The
Trainer copies rank 0's parameters and buffers to every rank (after checking that the replicas
match), all-reduces each step's gradients (their mean, as DDP) before the update, trains each
rank on its DistributedSampler shard in ``fit``, returns global means from ``fit`` and
``evaluate``, and ``save`` writes on rank 0 only. Every call is then collective: each rank makes
it, with the same arguments.
"""

import math
import os
from numbers import Integral
from typing import Callable, List, Optional, Union

import torch
from torch import nn
from torch.nn.modules import module as _module_module
from torch.optim import optimizer as _optimizer_module

from . import _C, __version__
from ._chain import extract_chain
from ._checkpoint import CheckpointError, checked_state, checksum, read_checkpoint, write_atomically
from ._distributed import resolve
from ._eager import eager_evaluate, eager_fit, eager_step
from ._mixed import check_precision, check_scaler_state, make_scaler, prepare_scaler
from .cli_support import fit_progress
from .optim import SGD as TorchextSGD

__all__ = ["Trainer", "CheckpointError"]

_LOSSES = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss}
_INT64_MAX = 2**63 - 1


def _loss_name(loss) -> Optional[str]:
    """"mse"/"cross_entropy" for the losses the core computes, else None."""
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected 'mse' or 'cross_entropy', "
                             "or a loss module")
        return loss
    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be 'mse', 'cross_entropy' or an nn.Module, got "
                        f"{type(loss).__name__}")
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


def _check_int(value, name, lo, hi=_INT64_MAX):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < lo:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
        raise ValueError(f"{name} must be {kind}, got {value!r}"[:300])
    if value > hi:
        raise ValueError(f"{name} must be at most {hi}, got {value}")
    return int(value)


def _core_params(layers):
    return [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``loss``; see the module docstring.

    Args:
        model: an ``nn.Module``. Chains of Linear layers and activations (e.g.
            :class:`torchext.nn.MLP`) run on the C++ core; other models eagerly.
        optimizer: an optimizer over the model's parameters (it must own every trainable one).
            ``torchext.optim.SGD`` and ``torch.optim.SGD`` run on the core.
        loss: ``"mse"``, ``"cross_entropy"`` (class-index targets), or a loss
            module; ``nn.MSELoss()``/``nn.CrossEntropyLoss()`` with default
            settings run on the core, any other module eagerly.
        process_group: a ``torch.distributed.ProcessGroup`` (e.g.
            ``torch.distributed.group.WORLD``) to train data-parallel without DDP; a
            ``DistributedDataParallel`` model brings its own. Construction is then collective.
        precision: ``None`` (the model's own dtype), ``"bf16-mixed"`` or ``"16-mixed"``: the
            Linear layers and activations in bfloat16 or float16 as under ``torch.autocast``,
            the loss and the update in float32 on the model's float32 parameters.
        scaler: with ``"16-mixed"``, the ``torch.amp.GradScaler`` whose settings and state the
            training uses (default: ``torch.amp.GradScaler(device)``, GradScaler's defaults);
            it is ``trainer.scaler``, and its state is saved in checkpoints.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss: Union[str, nn.Module] = "mse", *, process_group=None,
                 precision: Optional[str] = None,
                 scaler: Optional[torch.amp.GradScaler] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        name = _loss_name(loss)
        module, self._dp, core_allowed = resolve(model, process_group)
        precision = check_precision(precision)
        if precision is not None and self._dp is not None:
            raise ValueError(f"precision={precision!r} does not train data-parallel yet; leave "
                             "it out, or train in one process")
        first = next(iter(module.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        if precision is not None:
            other = next(((n, p) for n, p in module.named_parameters()
                          if p.dtype != torch.float32), None)
            if other is not None:
                raise ValueError(f"precision={precision!r} trains float32 models (the float32 "
                                 f"parameters are its master weights), but {other[0]} is "
                                 f"{other[1].dtype}; convert the model with model.float()")
        scaler = make_scaler(precision, scaler, device)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in module.named_parameters()
                   if p.requires_grad and id(p) not in owned]
        if missing:
            raise ValueError("the optimizer does not own the model's parameters: "
                             f"{', '.join(missing)} are not in any of its param groups")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = _LOSSES[name]() if isinstance(loss, str) else loss
        self._precision = precision
        self._scaler = scaler
        self._module = module  # the model without its DistributedDataParallel wrapper
        self._core = None
        self._eager_steps = 0
        chain = extract_chain(module) if core_allowed else None
        if chain is not None and name is not None and _is_sgd(optimizer):
            params = _core_params(chain.layers)
            if (all(p.is_contiguous() for p in params)
                    and params[0].dtype in (torch.float32, torch.float64)
                    and params[0].device.type in ("cpu", "cuda")
                    and len({(p.device, p.dtype) for p in params}) == 1):
                layers = chain.layers
                names = {id(p): n for n, p in module.named_parameters()}
                self._core = _C.TrainerCore(
                    [layer.weight for layer in layers], [layer.bias for layer in layers],
                    [layer.activation for layer in layers], name, optimizer, params, chain.watch,
                    None if self._dp is None else self._dp.group, [names[id(p)] for p in params],
                    precision=precision or "", scaler=scaler)
        if self._dp is not None:
            if self._core is not None:
                self._dp.replicate_buffers("torchext.Trainer")
            else:
                self._dp.eager_model()
        self._lock = self._core.lock if self._core is not None else _C.TrainerLock()

    @property
    def backend(self) -> str:
        """Where steps run: ``"cpu"`` or ``"cuda"`` (the C++ core), or ``"eager"``."""
        return self._core.backend if self._core is not None else "eager"

    @property
    def process_group(self):
        """The ``torch.distributed.ProcessGroup`` trained on (data-parallel), or None."""
        return None if self._dp is None else self._dp.group

    @property
    def precision(self) -> Optional[str]:
        """``None`` (the model's own dtype), ``"bf16-mixed"`` or ``"16-mixed"``."""
        return self._precision

    @property
    def scaler(self) -> Optional[torch.amp.GradScaler]:
        """The ``torch.amp.GradScaler`` of a ``"16-mixed"`` trainer, else None.

        The training steps its scale and growth tracker in place, as ``scaler.update()`` would.
        """
        return self._scaler

    @property
    def steps(self) -> int:
        """The number of steps taken (restored by :meth:`load_state_dict`).

        Each step applies its update, except in ``"16-mixed"`` a step whose gradients the loss
        scaler found not finite: it changes no parameter and no buffer, yet counts, as an
        iteration of the stock loop does.
        """
        return self._core.steps if self._core is not None else self._eager_steps

    @steps.setter
    def steps(self, value: int) -> None:
        value = _check_int(value, "steps", 0)
        with self._lock.hold("write", "torchext.Trainer.steps"):
            self._set_steps(value)

    def _set_steps(self, value):
        if self._core is not None:
            self._core.set_steps(value)
        else:
            self._eager_steps = value

    def _count_step(self):  # called by the eager loop, under the lock, after each update
        self._set_steps(self.steps + 1)

    def __repr__(self) -> str:
        precision = f", precision={self.precision!r}" if self.precision else ""
        ranks = "" if self._dp is None else \
            f", rank={self._dp.rank}, world_size={self._dp.world_size}"
        return (f"Trainer(backend={self.backend!r}, model={type(self.model).__name__}, "
                f"optimizer={type(self.optimizer).__name__}, loss={self.loss_fn!r}{ranks}"
                f"{precision})")

    def _uses_core(self) -> bool:
        # Hooks belong to optimizer.step() and module forwards: with any registered, run those.
        opt = self.optimizer
        return self._core is not None and not (
            opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
            or _optimizer_module._global_optimizer_pre_hooks
            or _optimizer_module._global_optimizer_post_hooks
            or _module_module._global_forward_hooks or _module_module._global_forward_pre_hooks
            or _module_module._global_backward_hooks
            or _module_module._global_backward_pre_hooks)

    # ------------------------------------------------------------------ training

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on the batch ``(x, y)``; returns the loss (0-dim tensor).

        The loss is the one computed before the update, as in the stock loop (which applies
        the update even when the loss is not finite; so does this).
        """
        # The checks inline: at the seed network's size each Python call here weighs.
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            self._check_tensors(x, y, "step")  # raises, naming the argument
        if self._dp is not None:
            self._dp.check_synchronising("torchext.Trainer.step")
        if self._uses_core():
            if self._scaler is not None:
                self._prepare_scaler()
            loss = self._core.step(x, y)
            # What optimizer.step() flags: LR schedulers check it to warn about calling
            # scheduler.step() before any optimizer step.
            self.optimizer._opt_called = True
            return loss
        with self._lock.hold("run", "torchext.Trainer.step"):
            return eager_step(self, x, y)

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, batch_size: int = 128,
            shuffle: bool = True, generator: Optional[torch.Generator] = None,
            progress: Union[None, bool, Callable] = None, seed: Optional[int] = None,
            start_epoch: int = 0) -> List[float]:
        """Trains for whole epochs over ``(x, y)``; returns the mean loss of each epoch.

        Each epoch draws ``torch.randperm(len(x), generator=generator)`` (when
        ``shuffle``) and steps over minibatches of ``batch_size`` rows in that order;
        the last may be short. The epoch's loss is the mean over its samples.

        With ``seed`` instead of ``generator`` — and always data-parallel, where ``seed``
        defaults to 0 — epoch ``e`` of the call is DistributedSampler's:
        ``DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)`` after
        ``set_epoch(start_epoch + e)``. Data-parallel, every rank passes the whole dataset and
        trains on its shard (the dataset padded to a multiple of the world size, as the
        sampler does), and each epoch's loss is the mean over every rank's samples.

        ``progress``: ``True`` for a progress bar (tqdm), ``False`` for none, ``None``
        for a bar when stderr is a terminal, or a callable
        ``progress(epoch, step, steps_per_epoch, mean_loss)`` called now and then.

        A non-finite loss stops training with an error naming the epoch and step, before that
        step's update on the CPU (on CUDA the losses are checked once per epoch, without a host
        synchronisation; the updates from the first non-finite loss on are skipped on the
        device). Either way the model keeps its last finite state and ``steps`` counts the
        updates applied. Ctrl-C stops fit after the step during which it was pressed.
        """
        samples = self._check_data(x, y, "fit")
        batch_size = _check_int(batch_size, "batch_size", 1)
        epochs = _check_int(epochs, "epochs", 0)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise TypeError(f"progress must be None, a bool or a callable, got "
                            f"{type(progress).__name__}")
        if seed is not None:
            seed = _check_int(seed, "seed", 0)
        start_epoch = _check_int(start_epoch, "start_epoch", 0)
        if self._dp is not None:
            self._dp.check_synchronising("torchext.Trainer.fit")
            samples = self._dp.samples_per_rank(samples)
            if progress is None and self._dp.rank != 0:
                progress = False  # one bar, on rank 0
        steps_per_epoch = math.ceil(samples / min(batch_size, samples))
        if epochs * steps_per_epoch > _INT64_MAX - self.steps:
            raise ValueError(f"{epochs} epochs of {steps_per_epoch} steps overflow the step count")
        if callable(progress) and not isinstance(progress, bool):
            callback, close = progress, lambda: None
        else:
            when = {None: "auto", True: "always", False: "never"}[progress]
            callback, close = fit_progress(epochs, steps_per_epoch, when=when)
        try:
            if self._uses_core():
                self._prepare_scaler()
                losses = self._core.fit(x, y, epochs, batch_size, shuffle, generator, callback,
                                        seed, start_epoch)
                self.optimizer._opt_called = True
                return losses
            with self._lock.hold("run", "torchext.Trainer.fit"):
                return eager_fit(self, x, y, epochs, min(batch_size, samples), shuffle,
                                 generator, callback, seed, start_epoch)
        finally:
            close()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int] = None) -> float:
        """Mean loss over ``(x, y)`` without training, in batches of ``batch_size`` rows.

        Data-parallel, every rank passes the whole dataset and evaluates a contiguous
        ``1/world_size`` of it; the result is the mean over all of it, on every rank.
        """
        self._check_data(x, y, "evaluate")
        batch_size = 0 if batch_size is None else _check_int(batch_size, "batch_size", 1)
        if self._uses_core():
            return self._core.evaluate(x, y, batch_size)
        with self._lock.hold("run", "torchext.Trainer.evaluate"):
            return eager_evaluate(self, x, y, batch_size)

    def _prepare_scaler(self):
        if self._scaler is None:  # every precision but "16-mixed": nothing to do in the hot path
            return
        first = next(iter(self.model.parameters()), None)
        if first is not None:
            prepare_scaler(self._scaler, first.device)

    @staticmethod
    def _check_tensors(x, y, who):
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Trainer.{who}: {name} must be a tensor, got {type(t).__name__}")

    @classmethod
    def _check_data(cls, x, y, who) -> int:
        cls._check_tensors(x, y, who)
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"Trainer.{who}: x and y need a leading sample dimension")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"Trainer.{who}: x has {x.shape[0]} samples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"Trainer.{who}: the data is empty (0 samples)")
        return x.shape[0]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """``{"model", "optimizer", "step", "torchext_version"}``: plain, torch.load-safe.

        ``"model"`` is the state of the model without its DistributedDataParallel wrapper, so
        checkpoints move between data-parallel and single-process Trainers.

        A ``"16-mixed"`` trainer adds ``"scaler"``: ``trainer.scaler.state_dict()``.
        """
        with self._lock.hold("read", "torchext.Trainer.state_dict"):
            return self._state()

    def _state(self):
        state = {"model": self._module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.steps, "torchext_version": __version__}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores model, optimizer and step count.

        Everything is checked first — the keys, every tensor's shape, kind and device, the
        optimizer's groups and buffers, the step count, the loss scaler's state — so on a bad
        state nothing changes. A ``"16-mixed"`` trainer restores its scaler from ``"scaler"``
        (a checkpoint without one, or with a disabled scaler's ``{}``, leaves it as it is); other
        precisions ignore that entry.
        Data-parallel it is collective: every rank must pass the same state (same step and
        checksum), or every rank raises and none changes.
        """
        self._apply_state(lambda: state, "torchext.Trainer.load_state_dict")

    def _apply_state(self, read_state, who, misfit=None):
        """Loads ``read_state()`` under the lock once every check passed (on every rank).

        ``misfit(error)``: the CheckpointError message for a state that does not fit.
        """
        def checked():
            state = read_state()
            try:
                step = checked_state(state, self._module, self.optimizer,
                                     _is_sgd(self.optimizer))
                if self.scaler is not None and state.get("scaler") is not None:
                    check_scaler_state(state["scaler"])
                return state, step
            except ValueError as exc:
                if misfit is None:
                    raise
                raise CheckpointError(misfit(exc)) from None

        with self._lock.hold("write", who):
            if self._dp is None:
                state, step = checked()
            else:
                failure, step, digest = None, 0, 0
                try:
                    state, step = checked()
                    digest = int(checksum(state)[len("sha1:"):][:15], 16)
                except Exception as exc:  # noqa: BLE001 - raised below, after the exchange
                    failure = exc
                self._dp.agree(failure is None, [("the state's step count", step),
                                                 ("the state's checksum", digest)], who)
                if failure is not None:
                    raise failure
            self.optimizer.load_state_dict(state["optimizer"])
            self._module.load_state_dict(state["model"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self._set_steps(step)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes :meth:`state_dict` and its checksum with ``torch.save``, atomically.

        See ``torchext._checkpoint`` for the rules: links are written through, only a regular
        file is replaced, the file gets torch.save's mode, and no temporary file is left behind.
        Data-parallel, rank 0 writes (every rank holds the same state) while the others wait
        for it; if it fails, every rank raises.
        """
        with self._lock.hold("read", "torchext.Trainer.save"):
            failure = None
            if self._dp is None or self._dp.rank == 0:
                try:
                    state = self._state()
                    state["checksum"] = checksum(state)
                    write_atomically(path, lambda f: torch.save(state, f),
                                     "torchext.Trainer.save")
                except Exception as exc:  # noqa: BLE001 - raised below, after the exchange
                    failure = exc
            if self._dp is not None:
                self._dp.agree(failure is None, [], "torchext.Trainer.save")
            if failure is not None:
                raise failure

    def load(self, path: Union[str, os.PathLike]) -> None:
        """Loads a checkpoint written by :meth:`save` (``torch.load``, ``weights_only``).

        A missing, empty, truncated, damaged (checksum) or foreign file raises
        :class:`CheckpointError` naming the file; nothing changes. Data-parallel, every rank
        reads the file (each must see it) and loads only if every rank could.
        """
        params = next(iter(self._module.parameters()), None)
        device = params.device if params is not None else "cpu"
        self._apply_state(
            lambda: read_checkpoint(path, device, "torchext.Trainer.load"),
            "torchext.Trainer.load",
            lambda exc: f"torchext.Trainer.load: {os.fspath(path)} does not fit this Trainer: "
                        f"{exc}")
