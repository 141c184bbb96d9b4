"""``python -m torchext``: train one network with torchext.Trainer and with stock PyTorch, compare.

The main job trains the walk-through's network (MLP 20→30→30→40, ReLU, batch 128, SGD lr 1e-2
momentum 0.9) twice from identical initial weights and the same per-epoch shuffling: once with
``torchext.Trainer`` and once with the plain stock loop (``torch.nn.Sequential`` of
``torch.nn.Linear``, ``torch.optim.SGD``, zero_grad → forward → loss → backward → step). It
prints steps per second, the speed-up, the final training and held-out losses of both, and
whether the runs agree within the parity tolerance (exit status 1 if not). The data is a built-in
teacher task (see ``torchext.cli_data``) or ``--data PATH``.

    python -m torchext [options]          the main job (options: --help)
    python -m torchext bench [options]    the benchmark matrix against stock torch
    python -m torchext check              build info and Linear parity on the seed shapes
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

import torchext

from .bench import int_list
from .cli_data import TEACHER_HIDDEN, DataError, load_data, split, teacher_task
from .nn import ACTIVATIONS, MLP

PROG = "python -m torchext"
SEED_LAYERS = [(20, 30), (30, 30), (30, 40)]
SEED_BATCH = 128
# Parity tolerances. Main job: relative, on losses and parameters. Check: (rtol, atol).
PARITY_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CHECK_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}
PROGRESS_INTERVAL_S = 0.05  # how often the stock loop reports progress, as the C++ core does


# ---------------------------------------------------------------------------- check

def seed_network(linear_cls, device, dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        *[linear_cls(i, o, device=device, dtype=dtype) for i, o in SEED_LAYERS]
    )


def max_relative_error(actual, expected):
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def check_linear(device, dtype):
    """Runs forward and backward of the seed network both ways; returns rows of results."""
    stock = seed_network(torch.nn.Linear, device, dtype)
    mine = seed_network(torchext.nn.Linear, device, dtype)
    x = torch.randn(SEED_BATCH, SEED_LAYERS[0][0], device=device, dtype=dtype)
    out_stock, out_mine = stock(x), mine(x)
    (out_stock.sum() - 12).backward()
    (out_mine.sum() - 12).backward()
    rtol, atol = CHECK_TOLERANCE[dtype]
    rows = [("output", out_mine, out_stock)]
    for (name, p_mine), p_stock in zip(mine.named_parameters(), stock.parameters()):
        rows.append((f"grad {name}", p_mine.grad, p_stock.grad))
    return [
        (what, max_relative_error(a, e), torch.allclose(a, e, rtol=rtol, atol=atol))
        for what, a, e in rows
    ]


def run_check(device, dtype_name):
    """Prints the build info and the seed-network Linear parity; returns the exit status."""
    dtype = getattr(torch, dtype_name)
    info = torchext.build_info()
    cuda = f"yes (CUDA {info['cuda_version']})" if info["cuda"] else "no"
    print(f"torchext {info['version']}  built against torch {info['torch_version']}"
          f"  CUDA kernels: {cuda}")
    print(f"running on torch {torch.__version__}, device {device}, {dtype_name}")
    print()
    print(f"seed network {' -> '.join(str(i) for i, _ in SEED_LAYERS)} -> {SEED_LAYERS[-1][1]}"
          f", batch {SEED_BATCH}: torchext.nn.Linear vs torch.nn.Linear")
    results = check_linear(device, dtype)
    width = max(len(what) for what, _, _ in results)
    for what, err, ok in results:
        print(f"  {what:<{width}}  max rel. error {err:.2e}  {'ok' if ok else 'MISMATCH'}")
    all_ok = all(ok for _, _, ok in results)
    print()
    print("parity: " + ("all match within tolerance" if all_ok else "MISMATCH"))
    return 0 if all_ok else 1


# ---------------------------------------------------------------------------- main job

def stock_twin(model):
    """``torch.nn.Sequential`` of ``torch.nn.Linear`` and activations holding model's weights."""
    layers = [torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                              device=m.weight.device, dtype=m.weight.dtype)
              if isinstance(m, torchext.nn.Linear) else type(m)() for m in model]
    twin = torch.nn.Sequential(*layers)
    twin.load_state_dict(model.state_dict())
    return twin


def stock_fit(model, optimizer, loss_fn, x, y, epochs, batch_size, generator, progress):
    """The hand-written stock loop, with fit's data order; returns each epoch's mean loss."""
    samples = x.shape[0]
    steps = math.ceil(samples / batch_size)
    epoch_losses, last_report = [], time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(samples, generator=generator).to(x.device)
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
        if not math.isfinite(epoch_losses[-1]):
            raise RuntimeError(f"the stock loop's loss became {epoch_losses[-1]} in epoch {epoch}; "
                               "lower the learning rate or check the data")
        if progress is not None:
            progress(epoch, steps, steps, epoch_losses[-1])
    return epoch_losses


def progress_bar(label, total, enabled):
    """(callback for fit's progress argument or None, close): tqdm on a terminal, else nothing."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, desc=label, unit="step", leave=False)

    def update(epoch, step, steps, mean_loss):
        bar.n = epoch * steps + step
        if not math.isnan(mean_loss):
            bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
        bar.refresh()

    return update, bar.close


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


def run_job(args):
    """Trains both ways and returns the report (a JSON-ready dict)."""
    dtype = getattr(torch, args.dtype)
    x, y, x_held, y_held, description = load_task(args, dtype)
    outputs = y.shape[1] if args.loss == "mse" else int(torch.cat([y, y_held]).max()) + 1
    sizes = [x.shape[1], *args.hidden, outputs]
    torch.manual_seed(args.seed)
    model = MLP(sizes, activation=args.activation, device=args.device, dtype=dtype)
    stock = stock_twin(model)
    hyper = {"lr": args.lr, "momentum": args.momentum}
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **hyper), args.loss)
    stock_opt = torch.optim.SGD(stock.parameters(), **hyper)
    loss_fn = trainer.loss_fn
    steps = args.epochs * math.ceil(x.shape[0] / args.batch_size)

    # One step of each on throw-away copies first, so that neither timing pays for first-call
    # set-up (thread pools, allocator, BLAS) alone.
    xb, yb = x[:args.batch_size], y[:args.batch_size]
    warm = copy.deepcopy(model)
    torchext.Trainer(warm, torchext.optim.SGD(warm.parameters(), **hyper), args.loss).step(xb, yb)
    warm = copy.deepcopy(stock)
    stock_fit(warm, torch.optim.SGD(warm.parameters(), **hyper), loss_fn, xb, yb, 1,
              args.batch_size, torch.Generator(), None)

    def fit_torchext(generator, callback):
        return trainer.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                           generator=generator, progress=callback or False)

    def fit_stock(generator, callback):
        return stock_fit(stock, stock_opt, loss_fn, x, y, args.epochs, args.batch_size,
                         generator, callback)

    runs = {}
    for name, fit in (("torchext", fit_torchext), ("torch", fit_stock)):
        label = "torchext.Trainer" if name == "torchext" else "stock loop"
        callback, close = progress_bar(label, steps, not args.no_progress)
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
    }


def print_report(report):
    threads = report["torch_threads"]
    print(f"torchext {torchext.__version__} (torch {torch.__version__}, {threads} "
          f"thread{'s' if threads != 1 else ''}) on {report['device']}, {report['dtype']}; "
          f"Trainer backend: {report['torchext']['backend']}")
    print(f"data: {report['task']}: {report['samples']['train']} training / "
          f"{report['samples']['held_out']} held-out samples")
    print(f"network: MLP {'-'.join(map(str, report['sizes']))} {report['activation']}, "
          f"{report['loss']} loss, SGD lr {report['lr']:g} momentum {report['momentum']:g}, "
          f"batch {report['batch_size']}, {report['epochs']} epochs ({report['steps']} steps)")
    print()
    print(f"{'':<20}{'steps/s':>10}{'time':>10}{'train loss':>14}{'held-out loss':>15}")
    for name, label in (("torchext", "torchext.Trainer"), ("torch", "stock PyTorch loop")):
        run = report[name]
        print(f"{label:<20}{run['steps_per_second'] or 0:>10.0f}{run['seconds']:>9.3f}s"
              f"{_fmt(run['train_loss']):>14}{_fmt(run['held_out_loss']):>15}")
    parity = report["parity"]
    print()
    if report["speedup"] is not None:
        print(f"speed-up: {report['speedup']:.2f}x")
    print(f"parity: {'agree' if parity['agree'] else 'DIFFER'} within rtol {parity['rtol']:g} "
          f"(max rel. difference: losses {parity['max_rel_loss_difference']:.1e}, "
          f"parameters {parity['max_rel_param_difference']:.1e})")
    if report["saved"]:
        print(f"checkpoint: {report['saved']}")
    if report["plot"]:
        print(f"plot: {report['plot']}")


def _fmt(value):
    return "-" if value is None else f"{value:.6g}"


def save_plot(path, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    epochs = range(1, report["epochs"] + 1)
    ax.plot(epochs, report["torchext"]["epoch_losses"], "-", lw=2.5, label="torchext.Trainer")
    ax.plot(epochs, report["torch"]["epoch_losses"], "o--", ms=4, label="stock PyTorch loop")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"mean training loss ({report['loss']})")
    ax.set_title(f"MLP {'-'.join(map(str, report['sizes']))}, {report['dtype']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------- command line

def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _hidden(text):
    return int_list(text, what="hidden sizes must be positive")


def _fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the walk-through's network with torchext.Trainer and with the stock "
                    "PyTorch loop from identical weights; print speed, losses and whether the "
                    "two agree (exit status 1 if not, 2 for bad arguments or data).",
        epilog="other commands:\n"
               f"  {PROG} bench [--quick] ...  benchmark matrix against stock torch"
               " (bench --help)\n"
               f"  {PROG} check                build info and Linear parity on the seed shapes")
    parser.add_argument("--check", action="store_true",
                        help="only print the build info and check torchext.nn.Linear against "
                             "torch.nn.Linear on the seed shapes (same as the 'check' command)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                        help="parameter and data type; parity tolerance 1e-5 for float32, 1e-10 "
                             "for float64 (default: float32)")
    parser.add_argument("--epochs", type=_positive_int, default=5, help="default: 5")
    parser.add_argument("--batch-size", type=_positive_int, default=128, help="default: 128")
    parser.add_argument("--hidden", type=_hidden, default=[30, 30],
                        help="hidden layer sizes, comma-separated; '' for none (default: 30,30)")
    parser.add_argument("--activation", default="relu", choices=list(ACTIVATIONS),
                        help="between layers (default: relu)")
    parser.add_argument("--loss", default="mse", choices=["mse", "cross_entropy"],
                        help="mse regresses the targets; cross_entropy takes class indices (on "
                             "the built-in task: the teacher's argmax) (default: mse)")
    parser.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate (default: 0.01)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    parser.add_argument("--data", metavar="PATH",
                        help="train on this file instead of the built-in teacher task: .pt "
                             "(torch.save'd dict of tensors x, y), .npz (arrays x, y) or .csv "
                             "(last --targets columns are the target; for cross_entropy the "
                             "last column is the class index; an optional header line)")
    parser.add_argument("--targets", type=_positive_int, default=1,
                        help="number of target columns at the end of a .csv (mse; default: 1)")
    parser.add_argument("--samples", type=_positive_int, default=5120,
                        help="size of the built-in task, held-out part included (default: 5120)")
    parser.add_argument("--held-out", type=_fraction, default=0.2,
                        help="fraction of the samples held out from training (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the task, the initial weights and the shuffling "
                             "(default: 0)")
    parser.add_argument("--save", metavar="PATH",
                        help="write the trained torchext.Trainer checkpoint here (Trainer.load "
                             "reads it; torch.load too)")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG of both training-loss curves (needs matplotlib)")
    parser.add_argument("--threads", type=_positive_int,
                        help="torch.set_num_threads for both runs (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (one is shown on a terminal when tqdm is installed)")
    return parser


def _check_output_path(option, path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DataError(f"{option} {path}: is a directory")
    if not os.path.isdir(directory):
        raise DataError(f"{option} {path}: the folder {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise DataError(f"{option} {path}: the folder {directory} is not writable")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    is_check = argv[:1] == ["check"]
    parser = build_parser()
    args = parser.parse_args(argv[1:] if is_check else argv)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device")
    if is_check or args.check:
        return run_check(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for option, path in (("--save", args.save), ("--plot", args.plot)):
            if path:
                _check_output_path(option, path)
        if args.plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise DataError("--plot needs matplotlib: pip install matplotlib "
                                "(or pip install \"torchext[bench]\")") from None
        report = run_job(args)
        if args.plot:
            save_plot(args.plot, report)
    except (DataError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a diverging loss, or data the network cannot take
        print(f"{PROG}: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["parity"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
