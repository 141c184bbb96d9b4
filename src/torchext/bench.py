"""``python -m torchext bench``: torchext against stock torch, timed in the same process.

Kinds of cell, each over network sizes (the seed network 20-30-30-40 up to GEMM-bound widths)
and batch sizes:
  linear  one Linear layer forward + backward (input gradient included): torch.nn.Linear eager
          and under torch.compile, against torchext.nn.Linear
  sgd     one SGD-with-momentum step over the network's parameters: torch.optim.SGD with
          foreach=True and with fused=True, against torchext.optim.SGD
  step    one whole training step (zero_grad, forward, MSE loss, backward, SGD step): the stock
          loop with foreach and with fused SGD, torch.compile of the model, and on CUDA the
          stock step captured as one CUDA graph; against torchext.Trainer.step; plus an
          MNIST-sized 784-256-256-10 network with cross-entropy at batch 256
  threads one training step at 1 thread and at torch's thread count (CPU only), on the
          10-46-46-10 MLP at batch 128 (a known PyTorch thread cliff), the seed network at
          batch 2048, the 784-256-256-10 cross-entropy network at batch 256 and the widest
          network at the last batch size:
          stock (fused SGD) and torchext; scaling = time at 1 thread / time at N threads
  fit     one epoch of 32 steps on the seed network, at the first batch size: the stock loop
          (foreach and fused SGD) against Trainer.fit
  ddp     one data-parallel training step on 1 and 2 processes (one thread each, gloo, CPU
          only), on the seed network and the widest network, at the first batch size per
          process: stock DistributedDataParallel (foreach and fused SGD) against
          Trainer(..., process_group=...), with the gradient all-reduce timed on its own
With --precision bf16-mixed or 16-mixed, the step and fit cells time Trainer(precision=...)
against the same stock loops under torch.autocast (with torch.amp.GradScaler for 16-mixed),
and against the stock float32 loops, all in the same run: ratio is against the best autocast
loop, ratio_fp32 against the best float32 one.
Timing: a few warm-up calls, then each contender runs blocks of calls sized to a fixed time per
block; blocks alternate between contenders (the starting contender rotates every round) so that
drift in machine load hits all alike. A cell reports each contender's median seconds per call,
its spread ((max - min) / median over rounds), and ratio = best stock median / torchext median
(> 1: torchext is faster). CUDA timings use CUDA events. The machine, torch's thread count and
the load average before and after are recorded with the results. A roofline column gives
torchext's achieved GFLOP/s (GEMM arithmetic) or GB/s (SGD's memory traffic) against peaks the
bench measures first on the machine itself, a large-GEMM probe and a copy probe
(``torchext.bench_probes``).
"""

import argparse
import copy
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time

import torch

import torchext

from ._checkpoint import CheckpointError, writable_target
from ._mixed import PRECISIONS
from .bench_probes import cell_work, measure_peaks, roofline
from .bench_report import format_markdown, format_table, save_plot
from .cli_support import (
    ArgumentParser,
    check_device,
    int_list,
    integer,
    print_error,
    progress_bar,
    real,
)

KINDS = ("linear", "sgd", "step", "fit", "ddp", "threads")
MIXED_KINDS = ("step", "fit")  # the kinds --precision times
SEED_SIZES = [20, 30, 30, 40]
MNIST_SIZES, MNIST_BATCH = [784, 256, 256, 10], 256  # the cross-entropy network of step/threads
CLIFF_SIZES, CLIFF_BATCH = [10, 46, 46, 10], 128  # PyTorch's thread-cliff MLP
# The seed network at a batch where its products are large enough to split over threads, yet
# its data fit one core's caches: where torchext itself had a thread cliff.
SEED_LONG_BATCH = 2048
FIT_STEPS = 32  # steps per timed epoch, so that every batch size is timed over the same count
# Default matrices: widths of the square networks besides the seed network, and batch sizes.
WIDTHS = {("cpu", True): [256], ("cpu", False): [256, 1024],
          ("cuda", True): [1024], ("cuda", False): [1024, 4096]}
BATCHES = {("cpu", True): [128, 1024], ("cpu", False): [128, 1024],
           ("cuda", True): [128, 2048], ("cuda", False): [128, 2048, 8192]}
LR, MOMENTUM = 1e-4, 0.9


# ---------------------------------------------------------------------------- timing

class Timer:
    """Seconds per call of ``fn`` over a block of ``iters`` calls (CUDA events on the GPU)."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, iters):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        begin = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - begin) / iters


def measure(contenders, timer, rounds, block_s, warmup=3):
    """{name: {"median_s", "spread", "iters"}} for each callable in ``contenders``."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    iters = {name: max(1, min(10_000, math.ceil(block_s / max(timer(fn, 1), 1e-9))))
             for name, fn in contenders.items()}
    names = list(contenders)
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(timer(contenders[name], iters[name]))
    out = {}
    for name, values in samples.items():
        median = statistics.median(values)
        out[name] = {"median_s": median, "spread": (max(values) - min(values)) / median,
                     "iters": iters[name]}
    return out


# ---------------------------------------------------------------------------- contenders

def _linear_contenders(sizes, batch, device, dtype, compile_):
    in_f, out_f = sizes[0], sizes[1]
    torch.manual_seed(0)
    stock = torch.nn.Linear(in_f, out_f, device=device, dtype=dtype)
    mine = torchext.nn.Linear(in_f, out_f, device=device, dtype=dtype)
    mine.load_state_dict(stock.state_dict())
    x = torch.randn(batch, in_f, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, out_f, device=device, dtype=dtype)

    def step_of(module):
        def step():
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(grad)
        return step

    contenders = {"torch eager": step_of(stock)}
    if compile_:
        contenders["torch compile"] = step_of(torch.compile(copy.deepcopy(stock), dynamic=False))
    contenders["torchext"] = step_of(mine)
    return contenders


def _sgd_contenders(sizes, device, dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = [s for i, o in itertools.pairwise(sizes) for s in ((o, i), (o,))]
    values = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=dtype).to(device) * 1e-3 for s in shapes]

    def params():
        ps = [v.clone().requires_grad_() for v in values]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    kw = {"lr": LR, "momentum": MOMENTUM}
    return {"torch foreach": torch.optim.SGD(params(), foreach=True, **kw).step,
            "torch fused": torch.optim.SGD(params(), fused=True, **kw).step,
            "torchext": torchext.optim.SGD(params(), **kw).step}


def _stock_pair(sizes, device, dtype):
    """A stock Sequential and a torchext MLP holding the same initial weights."""
    torch.manual_seed(0)
    mine = torchext.nn.MLP(sizes, device=device, dtype=dtype)
    layers = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(fan_in, fan_out, device=device, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    stock = torch.nn.Sequential(*layers)
    stock.load_state_dict(mine.state_dict())
    return stock, mine


_LOSS_FUNCTIONS = {"mse": torch.nn.functional.mse_loss,
                   "cross_entropy": torch.nn.functional.cross_entropy}


def _stock_step(model, optimizer, x, y, loss="mse", precision=None, scaler=None):
    """The stock step; with a precision under torch.autocast, and with `scaler` (16-mixed)."""
    loss_fn = _LOSS_FUNCTIONS[loss]
    if precision is None:
        def step():
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        return step
    device_type = x.device.type

    def mixed_step():
        optimizer.zero_grad()
        with torch.autocast(device_type, dtype=PRECISIONS[precision]):
            value = loss_fn(model(x), y)
        if scaler is None:
            value.backward()
            optimizer.step()
        else:
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
    return mixed_step


def _stock_scaler(precision, device):
    return torch.amp.GradScaler(torch.device(device).type) if precision == "16-mixed" else None


def _step_data(sizes, batch, device, dtype, loss):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=dtype).to(device)
    if loss == "mse":
        return x, torch.randn(batch, sizes[-1], generator=gen, dtype=dtype).to(device)
    return x, torch.randint(0, sizes[-1], (batch,), generator=gen).to(device)


def _cuda_graph_step(model, optimizer, x, y):
    """The stock step captured whole as one CUDA graph (static inputs), returned as replay."""
    static_x, static_y = x.clone(), y.clone()
    # Warm-up on a side stream, as graph capture requires; it also creates the momentum
    # buffers, so the captured step takes SGD's steady-state path.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _stock_step(model, optimizer, static_x, static_y)()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # backward allocates the grads in the graph's pool
    with torch.cuda.graph(graph):
        torch.nn.functional.mse_loss(model(static_x), static_y).backward()
        optimizer.step()
    return graph.replay


def _step_contenders(sizes, batch, device, dtype, compile_, notes, loss="mse",
                     precision=None):
    stock, mine = _stock_pair(sizes, device, dtype)
    x, y = _step_data(sizes, batch, device, dtype, loss)
    kw = {"lr": LR, "momentum": MOMENTUM}
    contenders = {}
    for mixed in (None, precision) if precision else (None,):
        prefix = "torch autocast" if mixed else "torch"
        for variant in ("foreach", "fused"):
            model = copy.deepcopy(stock)
            optimizer = torch.optim.SGD(model.parameters(), **{variant: True}, **kw)
            contenders[f"{prefix} {variant}"] = _stock_step(model, optimizer, x, y, loss, mixed,
                                                            _stock_scaler(mixed, device))
    if compile_:
        model = copy.deepcopy(stock)
        optimizer = torch.optim.SGD(model.parameters(), fused=True, **kw)
        name = "torch autocast compile" if precision else "torch compile"
        contenders[name] = _stock_step(torch.compile(model, dynamic=False), optimizer, x, y, loss,
                                       precision, _stock_scaler(precision, device))
    if device.startswith("cuda") and precision:
        notes.append("the stock step as one CUDA graph is left out with --precision (GradScaler "
                     "synchronises with the host inside the step)")
    elif device.startswith("cuda"):
        model = copy.deepcopy(stock)
        optimizer = torch.optim.SGD(model.parameters(), foreach=True, **kw)
        try:
            contenders["torch cuda graph"] = _cuda_graph_step(model, optimizer, x, y)
        except Exception as exc:  # noqa: BLE001 - capture support varies with torch and driver
            notes.append(f"cuda graph skipped for {sizes} b{batch}: {_first_line(exc)}")
    trainer = torchext.Trainer(mine, torchext.optim.SGD(mine.parameters(), **kw), loss,
                               precision=precision)
    contenders["torchext"] = lambda: trainer.step(x, y)
    return contenders


def _on_threads(fn, threads):
    fn.threads = threads  # read by ThreadsTimer
    return fn


class ThreadsTimer(Timer):
    """Timer that runs each block on the contender's own number of torch threads."""

    def __call__(self, fn, iters):
        torch.set_num_threads(fn.threads)
        return super().__call__(fn, iters)


def _threads_contenders(sizes, batch, device, dtype, loss, threads):
    """Stock (fused SGD) and torchext steps, each at 1 thread and at ``threads``."""
    stock, mine = _stock_pair(sizes, device, dtype)
    x, y = _step_data(sizes, batch, device, dtype, loss)
    kw = {"lr": LR, "momentum": MOMENTUM}
    contenders = {}
    for n in (1, threads):
        model = copy.deepcopy(stock)
        optimizer = torch.optim.SGD(model.parameters(), fused=True, **kw)
        contenders[f"torch fused {_threads_name(n)}"] = _on_threads(
            _stock_step(model, optimizer, x, y, loss), n)
    for n in (1, threads):
        model = copy.deepcopy(mine)
        trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **kw), loss)
        name = "torchext" if n == threads else f"torchext {_threads_name(n)}"
        contenders[name] = _on_threads(lambda trainer=trainer: trainer.step(x, y), n)
    return contenders


def _threads_name(n):
    return f"{n} thread{'s' if n != 1 else ''}"


def _fit_contenders(sizes, batch, device, dtype, precision=None):
    stock, mine = _stock_pair(sizes, device, dtype)
    gen = torch.Generator().manual_seed(1)
    samples = FIT_STEPS * batch
    x = torch.randn(samples, sizes[0], generator=gen, dtype=dtype).to(device)
    y = torch.randn(samples, sizes[-1], generator=gen, dtype=dtype).to(device)
    kw = {"lr": LR, "momentum": MOMENTUM}

    def stock_epoch(variant, mixed):
        model = copy.deepcopy(stock)
        optimizer = torch.optim.SGD(model.parameters(), **{variant: True}, **kw)
        order_gen = torch.Generator().manual_seed(0)
        scaler = _stock_scaler(mixed, device)

        def epoch():
            order = torch.randperm(samples, generator=order_gen).to(device)
            for start in range(0, samples, batch):
                index = order[start:start + batch]
                _stock_step(model, optimizer, x[index], y[index], "mse", mixed, scaler)()
        return epoch

    contenders = {}
    for mixed in (None, precision) if precision else (None,):
        prefix = "torch autocast" if mixed else "torch"
        for variant in ("foreach", "fused"):
            contenders[f"{prefix} {variant}"] = stock_epoch(variant, mixed)
    trainer = torchext.Trainer(mine, torchext.optim.SGD(mine.parameters(), **kw), "mse",
                               precision=precision)
    fit_gen = torch.Generator().manual_seed(0)
    contenders["torchext"] = lambda: trainer.fit(x, y, epochs=1, batch_size=batch,
                                                 generator=fit_gen, progress=False)
    return contenders


# ---------------------------------------------------------------------------- the matrix

def cells(kinds, widths, batches, extra_networks=()):
    """(kind, sizes, batch, loss) of every cell; sgd cells do not depend on the batch."""
    networks = [SEED_SIZES] + [[w] * 4 for w in widths] + [list(n) for n in extra_networks]
    out = []
    for kind in kinds:
        if kind == "ddp":
            continue  # run by bench_ddp, in processes of its own
        if kind == "fit":
            out.append((kind, SEED_SIZES, batches[0], "mse"))
        elif kind == "sgd":
            out += [(kind, sizes, None, "mse") for sizes in networks]
        elif kind == "threads":
            out += [(kind, CLIFF_SIZES, CLIFF_BATCH, "mse"),
                    (kind, SEED_SIZES, SEED_LONG_BATCH, "mse"),
                    (kind, MNIST_SIZES, MNIST_BATCH, "cross_entropy"),
                    (kind, networks[-1], batches[-1], "mse")]
        else:
            out += [(kind, sizes, b, "mse") for sizes in networks for b in batches]
            if kind == "step":
                out.append((kind, MNIST_SIZES, MNIST_BATCH, "cross_entropy"))
    return out


def run_cell(kind, sizes, batch, device, dtype, compile_, rounds, block_s, notes, loss="mse",
             peaks=None, precision=None):
    if compile_:
        # Dynamo caches per code object (one Sequential.forward for every network) and stops
        # compiling after a few recompiles; a reset gives each cell its own compiled code.
        torch.compiler.reset()
    if kind == "linear":
        contenders = _linear_contenders(sizes, batch, device, dtype, compile_)
    elif kind == "sgd":
        contenders = _sgd_contenders(sizes, device, dtype)
    elif kind == "step":
        contenders = _step_contenders(sizes, batch, device, dtype, compile_, notes, loss,
                                      precision)
    elif kind == "threads":
        threads = torch.get_num_threads()
        contenders = _threads_contenders(sizes, batch, device, dtype, loss, threads)
    else:
        contenders = _fit_contenders(sizes, batch, device, dtype, precision)
    for name in ("torch compile", "torch autocast compile"):
        if name not in contenders:
            continue
        # Compiling happens at the first call; any failure drops only this contender.
        try:
            contenders[name]()
        except Exception as exc:  # noqa: BLE001
            notes.append(f"torch.compile skipped for {kind} {sizes} b{batch}: "
                         f"{_first_line(exc)}")
            del contenders[name]
    if kind == "threads":
        try:
            times = measure(contenders, ThreadsTimer(device), rounds, block_s)
        finally:
            torch.set_num_threads(threads)
    else:
        times = measure(contenders, Timer(device), rounds, block_s)
    mine = times["torchext"]["median_s"]
    stock = {name: t["median_s"] for name, t in times.items() if not name.startswith("torchext")}
    # With a precision: like against like (the autocast loops), and against float32 too.
    mixed = {name: t for name, t in stock.items() if name.startswith("torch autocast")}
    best = min(mixed or stock, key=(mixed or stock).get)
    layer = sizes[:2] if kind == "linear" else sizes
    params = sum(o * i + o for i, o in itertools.pairwise(layer))
    cell = {"kind": kind, "network": _network_name(layer, loss), "sizes": layer, "batch": batch,
            "loss": loss, "params": params, "times": times, "best_stock": best,
            "ratio": stock[best] / mine}
    if mixed:
        fp32 = {name: t for name, t in stock.items() if name not in mixed}
        best_fp32 = min(fp32, key=fp32.get)
        cell.update(best_stock_fp32=best_fp32, ratio_fp32=stock[best_fp32] / mine)
    if kind == "threads":
        one, many = _threads_name(1), _threads_name(threads)
        cell["threads"] = threads
        cell["scaling"] = {
            "torchext": times[f"torchext {one}"]["median_s"] / times["torchext"]["median_s"],
            "stock": times[f"torch fused {one}"]["median_s"]
            / times[f"torch fused {many}"]["median_s"]}
    work = cell_work(kind, layer, batch, dtype, FIT_STEPS if kind == "fit" else 1)
    if peaks is not None and work is not None:
        cell["roofline"] = roofline(work, times["torchext"]["median_s"], peaks)
    return cell


def _network_name(sizes, loss="mse"):
    name = "-".join(map(str, sizes))
    if loss != "mse":
        name += f" {loss.replace('_', '-')}"
    return f"seed {name}" if sizes in (SEED_SIZES, SEED_SIZES[:2]) else name


def _first_line(exc):
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def machine(device):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchext": torchext.__version__, "os": platform.platform(),
            "cpu_kernels": torchext._C.cpu_capability(),
            "large_gemm": torchext._C.large_gemm()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def _kinds(text):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown or text!r}; choose from "
                                         f"{', '.join(KINDS)}")
    return kinds


def _networks(text):
    networks = []
    for item in text.split(","):
        try:
            sizes = [int(v) for v in item.strip().split("-")]
        except ValueError:
            sizes = []
        if len(sizes) < 2 or not all(1 <= v <= 65536 for v in sizes):
            raise argparse.ArgumentTypeError(
                f"bad network {item.strip()!r}: two or more sizes in [1, 65536] joined with '-', "
                "e.g. 1024-4096-4096-1024")
        networks.append(sizes)
    return networks


PROG = "python -m torchext bench"
MAX_THREADS = 1024  # as for the main job: far beyond any machine's cores


def build_parser():
    parser = ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true",
                        help="a smaller matrix, fewer rounds, no torch.compile (under a minute "
                             "on a 2-core CPU)")
    parser.add_argument("--kinds", type=_kinds,
                        help=f"comma-separated subset of {','.join(KINDS)} (default: all; "
                             f"{','.join(MIXED_KINDS)} with --precision)")
    parser.add_argument("--precision", choices=list(PRECISIONS),
                        help="time Trainer(precision=...) against the stock loops under "
                             "torch.autocast and in float32 (step and fit cells; float32 "
                             "models)")
    parser.add_argument("--widths", type=int_list(1, 65536, what="widths"),
                        help="widths of the square 4-layer networks timed besides the seed "
                             "network (default: 256,1024 on CPU, 1024,4096 on CUDA)")
    parser.add_argument("--networks", type=_networks,
                        help="comma-separated networks given by their sizes joined with '-' "
                             "(e.g. 1024-4096-4096-1024), timed besides the seed network and, "
                             "when --widths is given too, the square ones")
    parser.add_argument("--batch-sizes", type=int_list(1, 2**20, what="batch sizes"),
                        help="batch sizes (default per device)")
    parser.add_argument("--rounds", type=integer(1, 1000),
                        help="alternating rounds per cell, 1 to 1000 (default 9; 3 with --quick)")
    parser.add_argument("--block-ms", type=real(0, 60_000, lo_open=True),
                        help="time per timed block of calls, in (0, 60000] ms (default 100; 20 "
                             "with --quick)")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--threads", type=integer(1, MAX_THREADS),
                        help=f"torch.set_num_threads before timing, 1 to {MAX_THREADS}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG of ratio against size (needs matplotlib: pip install "
                             "\"torchext[bench]\")")
    return parser


def run(args, argv):
    """Times every cell; returns the JSON-ready report."""
    device, dtype = args.device, getattr(torch, args.dtype)
    key = ("cuda" if device.startswith("cuda") else "cpu", args.quick)
    widths = args.widths if args.widths is not None else [] if args.networks else WIDTHS[key]
    batches = BATCHES[key] if args.batch_sizes is None else args.batch_sizes
    rounds = args.rounds or (3 if args.quick else 9)
    block_s = (args.block_ms or (20 if args.quick else 100)) / 1e3
    compile_ = not (args.quick or args.no_compile)
    notes = [] if compile_ else ["torch.compile left out (--quick or --no-compile)"]
    load_before = _load_average()
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if load_before and load_before[0] > cores and threads > 1 and not device.startswith("cuda"):
        # Threads of one parallel region wait for each other when the cores are oversubscribed;
        # small ops then take milliseconds and the numbers say more about the load than torch.
        notes.append(f"load average {load_before[0]} exceeds the {cores} cores and torch uses "
                     f"{threads} threads: timings are unreliable; --threads 1 is steadier")
    kinds = args.kinds or list(MIXED_KINDS if args.precision else KINDS)
    if "threads" in kinds and (device.startswith("cuda") or torch.get_num_threads() < 2):
        notes.append("threads left out: it compares 1 thread with several on the CPU")
        kinds = [k for k in kinds if k != "threads"]
    peaks = measure_peaks(device, dtype)
    todo = cells(kinds, widths, batches, args.networks or ())
    results = []
    bar = progress_bar(len(todo), label="bench", when="auto")
    try:
        for i, (kind, sizes, batch, loss) in enumerate(todo):
            if bar is not None:
                bar.update(i, f"{kind} {'-'.join(map(str, sizes))} b{batch}")
            results.append(run_cell(kind, sizes, batch, device, dtype, compile_, rounds, block_s,
                                    notes, loss, peaks, args.precision))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    finally:
        if bar is not None:
            bar.close()
    if "ddp" in kinds:
        if device.startswith("cuda"):
            notes.append("ddp left out: it runs on the CPU (gloo) only")
        else:
            from .bench_ddp import run_cells

            networks = [SEED_SIZES] + ([[max(widths)] * 4] if widths else [])
            results += run_cells(networks, batches[0], rounds, block_s, dtype, LR, MOMENTUM,
                                 _network_name)
    return {
        "benchmark": "torchext vs stock torch",
        "command": shlex.join(["python", "-m", "torchext", "bench", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "dtype": args.dtype, "precision": args.precision,
        "machine": machine(device),
        "load_average": {"before": load_before, "after": _load_average()}, "peaks": peaks,
        "settings": {"quick": args.quick, "rounds": rounds, "block_s": block_s,
                     "compile": compile_, "lr": LR, "momentum": MOMENTUM},
        "notes": notes, "results": results,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.precision:
        if args.dtype != "float32":
            parser.error(f"--precision {args.precision} trains float32 models; leave out --dtype "
                         f"{args.dtype}")
        other = [kind for kind in args.kinds or () if kind not in MIXED_KINDS]
        if other:
            parser.error(f"--precision times the {' and '.join(MIXED_KINDS)} kinds, not "
                         f"{', '.join(other)}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return print_error(PROG, "--plot needs matplotlib: pip install \"torchext[bench]\"")
        try:
            writable_target(args.plot, "--plot")
        except CheckpointError as exc:
            return print_error(PROG, exc)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args, argv)
        if args.plot:
            save_plot(args.plot, report)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError, OSError) as exc:  # e.g. a size too large for memory
        return print_error(PROG, exc)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(format_markdown(report))
    else:
        print(format_table(report))
    return 0
