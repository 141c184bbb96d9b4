"""The main job of ``python -m torchext``: one network trained two ways, compared.

Trains an MLP with ``torchext.Trainer`` and, from identical initial weights and the same per-epoch
shuffling, with the plain stock loop (``torch.nn.Sequential`` of ``torch.nn.Linear``,
``torch.optim.SGD``, zero_grad → forward → loss → backward → step). ``run_job`` returns the report
(a JSON-ready dict): steps per second, the speed-up, the losses of both, and whether the runs agree
within the parity tolerance. Under torchrun both runs are data-parallel (``cli_distributed``).
"""

import copy
import math
import time

import torch

import torchext

from .cli_check import max_relative_error
from .cli_data import TEACHER_HIDDEN, DataError, load_data, split, teacher_task
from .cli_support import fit_progress
from .nn import MLP

# Parity tolerances, relative, on losses and parameters.
PARITY_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
PROGRESS_INTERVAL_S = 0.05  # how often the stock loop reports progress, as the C++ core does
MAX_PARAMETERS = 10**9  # 4 GB of float32 weights: beyond that a size is a typo


def stock_twin(model):
    """``torch.nn.Sequential`` of ``torch.nn.Linear`` and activations holding model's weights."""
    layers = [torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                              device=m.weight.device, dtype=m.weight.dtype)
              if isinstance(m, torchext.nn.Linear) else type(m)() for m in model]
    twin = torch.nn.Sequential(*layers)
    twin.load_state_dict(model.state_dict())
    return twin


def stock_fit(model, optimizer, loss_fn, x, y, epochs, batch_size, generator, progress,
              world=None, seed=0):
    """The hand-written stock loop, with fit's data order; returns each epoch's mean loss.

    Under torchrun (``world``), ``model`` is a DistributedDataParallel, each epoch takes this
    rank's DistributedSampler indices (``seed``, ``set_epoch``), and its loss is the mean over
    every rank's samples.
    """
    if world is None:
        samples = x.shape[0]
        def order_of(epoch):
            return torch.randperm(samples, generator=generator).to(x.device)
    else:
        samples = math.ceil(x.shape[0] / world.world_size)
        order_of = world.sampler_orders(x.shape[0], seed)
    steps = math.ceil(samples / batch_size)
    epoch_losses, last_report = [], time.perf_counter()
    for epoch in range(epochs):
        order = order_of(epoch)
        losses = []
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            # Kept on the device: a .item() per step would make CUDA wait for every step.
            losses.append(loss.detach())
            if progress is not None and time.perf_counter() - last_report > PROGRESS_INTERVAL_S:
                progress(epoch, step + 1, steps, math.nan)
                last_report = time.perf_counter()
        sizes = torch.full((steps,), float(batch_size), dtype=torch.float64, device=x.device)
        sizes[-1] = samples - (steps - 1) * batch_size
        epoch_losses.append((torch.stack(losses).double() * sizes).sum().item() / samples)
        if world is not None:
            epoch_losses[-1] = world.mean(epoch_losses[-1])
        if not math.isfinite(epoch_losses[-1]):
            raise RuntimeError(f"the stock loop's loss became {epoch_losses[-1]} in epoch {epoch}; "
                               "lower the learning rate or check the data")
        if progress is not None:
            progress(epoch, steps, steps, epoch_losses[-1])
    return epoch_losses


def timed(fn, *args, device):
    """(fn(*args), seconds), waiting for the GPU on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def relative_difference(a, b):
    return abs(a - b) / max(abs(b), torch.finfo(torch.float64).tiny)


def load_task(args, dtype):
    """(x_train, y_train, x_held, y_held, description) from --data or the teacher task."""
    if args.data:
        x, y = load_data(args.data, args.loss, targets=args.targets, dtype=dtype)
        description = args.data
    else:
        x, y = teacher_task(args.samples, 20, 40, args.loss, seed=args.seed, dtype=dtype)
        description = f"teacher network 20-{TEACHER_HIDDEN}-40 (tanh), seed {args.seed}"
    x_train, y_train, x_held, y_held = split(x, y, args.held_out, seed=args.seed)
    tensors = [t.to(args.device) for t in (x_train, y_train, x_held, y_held)]
    return (*tensors, description)


def run_job(args, world=None):
    """Trains both ways and returns the report (a JSON-ready dict).

    ``world`` (see ``torchext.cli_distributed``): data-parallel under torchrun, on its device.
    """
    dtype = getattr(torch, args.dtype)
    if world is not None:
        args.device = world.device
    x, y, x_held, y_held, description = load_task(args, dtype)
    outputs = y.shape[1] if args.loss == "mse" else int(torch.cat([y, y_held]).max()) + 1
    sizes = [x.shape[1], *args.hidden, outputs]
    parameters = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    if parameters > MAX_PARAMETERS:
        raise DataError(f"the network {'-'.join(map(str, sizes))} would have {parameters:.3g} "
                        f"parameters; at most {MAX_PARAMETERS:.0e} are allowed")
    torch.manual_seed(args.seed)
    model = MLP(sizes, activation=args.activation, device=args.device, dtype=dtype)
    stock = stock_twin(model)
    hyper = {"lr": args.lr, "momentum": args.momentum}
    group = None if world is None else world.group
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **hyper), args.loss,
                               process_group=group)
    # The stock loop trains `stock` (under torchrun through DDP, which copies rank 0's weights).
    stock_run = stock if world is None else torch.nn.parallel.DistributedDataParallel(stock)
    stock_opt = torch.optim.SGD(stock.parameters(), **hyper)
    loss_fn = trainer.loss_fn
    per_rank = x.shape[0] if world is None else math.ceil(x.shape[0] / world.world_size)
    steps_per_epoch = math.ceil(per_rank / args.batch_size)
    steps = args.epochs * steps_per_epoch

    # One step of each on throw-away copies first, so that neither timing pays for first-call
    # set-up (thread pools, allocator, BLAS) alone.
    xb, yb = x[:args.batch_size], y[:args.batch_size]
    warm = copy.deepcopy(model)
    torchext.Trainer(warm, torchext.optim.SGD(warm.parameters(), **hyper), args.loss,
                     process_group=group).step(xb, yb)
    warm = copy.deepcopy(stock)
    stock_fit(warm, torch.optim.SGD(warm.parameters(), **hyper), loss_fn, xb, yb, 1,
              args.batch_size, torch.Generator(), None)

    def fit_torchext(generator, callback):
        order = {"generator": generator} if world is None else {"seed": args.seed}
        return trainer.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                           progress=callback or False, **order)

    def fit_stock(generator, callback):
        return stock_fit(stock_run, stock_opt, loss_fn, x, y, args.epochs, args.batch_size,
                         generator, callback, world=world, seed=args.seed)

    quiet = args.no_progress or (world is not None and world.rank != 0)
    runs = {}
    for name, fit in (("torchext", fit_torchext), ("torch", fit_stock)):
        label = "torchext.Trainer" if name == "torchext" else "stock loop"
        callback, close = fit_progress(args.epochs, steps_per_epoch, label=label,
                                       when="never" if quiet else "auto")
        try:
            losses, seconds = timed(fit, torch.Generator().manual_seed(args.seed), callback,
                                    device=args.device)
        finally:
            close()
        runs[name] = {"seconds": seconds, "steps_per_second": steps / seconds if seconds else None,
                      "epoch_losses": losses, "train_loss": losses[-1], "held_out_loss": None}
    if len(x_held):
        runs["torchext"]["held_out_loss"] = trainer.evaluate(x_held, y_held)
        with torch.no_grad():
            runs["torch"]["held_out_loss"] = loss_fn(stock(x_held), y_held).item()
    runs["torchext"]["backend"] = trainer.backend

    rtol = PARITY_RTOL[dtype]
    pairs = list(zip(runs["torchext"]["epoch_losses"], runs["torch"]["epoch_losses"]))
    if len(x_held):
        pairs.append((runs["torchext"]["held_out_loss"], runs["torch"]["held_out_loss"]))
    loss_diff = max((relative_difference(a, b) for a, b in pairs), default=0.0)
    param_diff = max(max_relative_error(p.detach(), q.detach())
                     for p, q in zip(model.parameters(), stock.parameters()))
    if args.save:
        trainer.save(args.save)
    return {
        "task": description, "device": args.device, "dtype": args.dtype, "sizes": sizes,
        "activation": args.activation, "loss": args.loss, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum, "steps": steps,
        "samples": {"train": x.shape[0], "held_out": x_held.shape[0]},
        "torchext": runs["torchext"], "torch": runs["torch"],
        "speedup": runs["torch"]["seconds"] / runs["torchext"]["seconds"]
        if runs["torchext"]["seconds"] else None,
        "parity": {"rtol": rtol, "max_rel_loss_difference": loss_diff,
                   "max_rel_param_difference": param_diff,
                   "agree": loss_diff <= rtol and param_diff <= rtol},
        "torch_threads": torch.get_num_threads(), "saved": args.save, "plot": args.plot,
        "world_size": 1 if world is None else world.world_size,
        "distributed_backend": None if world is None else world.backend,
    }
