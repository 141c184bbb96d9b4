"""The ``ddp`` kind of ``python -m torchext bench``: data-parallel steps on 1 and 2 processes.

For each world size (1 and 2 processes, one torch thread each, gloo over loopback, started
here) and each network (the seed network and a wide one), every rank times one whole training
step on its own batch of ``batch`` rows: stock ``DistributedDataParallel`` with
``torch.optim.SGD`` (foreach and fused) against ``torchext.Trainer(model, ...,
process_group=WORLD)``, in alternating rounds as the other kinds. A block of steps starts on
every rank at once (a barrier) and counts as long as its slowest rank took. The all-reduce of one
step's gradient buffer (the parameters, as one flat tensor) is timed on its own, so the table
shows how much of a step is communication.
"""

import copy
import datetime
import math
import os
import queue
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchext

WORLD_SIZES = (1, 2)
START_TIMEOUT_S = 300  # for a world of processes to start, time every network and answer


def _measure(contenders, rounds, block_s, warmup=3):
    """{name: {"median_s", "spread", "iters"}}, every rank running the same blocks together."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    iters = {}
    for name, fn in contenders.items():
        dist.barrier()
        start = time.perf_counter()
        fn()
        one = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(one, op=dist.ReduceOp.MAX)  # every rank runs as many calls
        iters[name] = max(1, min(10_000, math.ceil(block_s / max(one.item(), 1e-9))))
    names = list(contenders)
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters[name]):
                contenders[name]()
            took = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            samples[name].append(took.item() / iters[name])
    return {name: {"median_s": statistics.median(v),
                   "spread": (max(v) - min(v)) / statistics.median(v), "iters": iters[name]}
            for name, v in samples.items()}


def _time_network(sizes, batch, rounds, block_s, dtype, lr, momentum):
    from .bench import _stock_pair, _stock_step

    stock, mine = _stock_pair(sizes, "cpu", dtype)
    gen = torch.Generator().manual_seed(dist.get_rank())
    x = torch.randn(batch, sizes[0], generator=gen, dtype=dtype)
    y = torch.randn(batch, sizes[-1], generator=gen, dtype=dtype)
    kw = {"lr": lr, "momentum": momentum}
    contenders = {}
    for variant in ("foreach", "fused"):
        model = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(stock))
        optimizer = torch.optim.SGD(model.parameters(), **{variant: True}, **kw)
        contenders[f"torch DDP {variant}"] = _stock_step(model, optimizer, x, y)
    trainer = torchext.Trainer(mine, torchext.optim.SGD(mine.parameters(), **kw), "mse",
                               process_group=dist.group.WORLD)
    contenders["torchext"] = lambda: trainer.step(x, y)
    times = _measure(contenders, rounds, block_s)
    flat = torch.zeros(sum(p.numel() for p in mine.parameters()), dtype=dtype)
    allreduce = _measure({"all-reduce": lambda: dist.all_reduce(flat)}, rounds, block_s)
    return times, allreduce["all-reduce"]["median_s"]


def _worker(rank, world_size, store, networks, batch, rounds, block_s, dtype, hyper, answers):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=120))
        results = [_time_network(sizes, batch, rounds, block_s, dtype, *hyper)
                   for sizes in networks]
        dist.destroy_process_group()
        if rank == 0:
            answers.put(results)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        answers.put(f"rank {rank} of {world_size}: {type(exc).__name__}: {exc}")


def _run_world(world_size, networks, batch, rounds, block_s, dtype, hyper):
    context = mp.get_context("spawn")
    answers = context.Queue()
    with tempfile.TemporaryDirectory(prefix="torchext-bench-ddp-") as folder:
        store = os.path.join(folder, "store")
        workers = [context.Process(target=_worker, daemon=True,
                                   args=(r, world_size, store, networks, batch, rounds, block_s,
                                         dtype, hyper, answers))
                   for r in range(world_size)]
        for w in workers:
            w.start()
        try:
            answer = answers.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            answer = f"no answer from {world_size} processes within {START_TIMEOUT_S} s"
        finally:
            for w in workers:
                w.join(timeout=30)
                if w.is_alive():
                    w.kill()
    if isinstance(answer, str):
        raise RuntimeError(f"the ddp benchmark failed: {answer}")
    return answer


def run_cells(networks, batch, rounds, block_s, dtype, lr, momentum, network_name):
    """The ``ddp`` cells of the report: one per network and world size."""
    cells = []
    for world_size in WORLD_SIZES:
        results = _run_world(world_size, networks, batch, rounds, block_s, dtype, (lr, momentum))
        for sizes, (times, allreduce_s) in zip(networks, results):
            stock = {name: t["median_s"] for name, t in times.items() if name != "torchext"}
            best = min(stock, key=stock.get)
            cells.append({
                "kind": "ddp", "network": network_name(sizes), "sizes": sizes, "batch": batch,
                "params": sum(o * i + o for i, o in zip(sizes[:-1], sizes[1:])),
                "processes": world_size, "times": times, "best_stock": best,
                "ratio": stock[best] / times["torchext"]["median_s"],
                "allreduce_s": allreduce_s,
                "steps_per_s": {name: 1 / t["median_s"] for name, t in times.items()},
            })
    return cells
