"""Whole training steps: torchext.Trainer against the stock eager loop, same process.

Stock loop: ``opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()`` with
``torch.optim.SGD(momentum=0.9)`` (foreach, torch's default). torchext:
``Trainer.step`` on an identical model (torchext.nn.MLP, same seed) with
``torchext.optim.SGD``, and ``Trainer.fit`` over an epoch of the seed task.
Contenders are timed in alternating rounds; each round takes the median
iteration, and the reported time is the median round.
ratio = stock time / torchext time (> 1: torchext is faster).

    python benchmarks/bench_trainer.py [--device cpu|cuda] [--quick] [--json]
"""

import argparse
import copy
import json
import statistics
import sys
import time

import torch
from torch import nn

import torchext

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_linear import Timer, machine_description  # noqa: E402

# name -> (sizes, batch, activation, loss)
CONFIGS = {
    "seed 20-30-30-40 b128 relu mse": ([20, 30, 30, 40], 128, "relu", "mse"),
    "784-256-256-10 b256 relu ce": ([784, 256, 256, 10], 256, "relu", "cross_entropy"),
    "1024-4096-4096-1024 b512 relu mse": ([1024, 4096, 4096, 1024], 512, "relu", "mse"),
}


def make_pair(sizes, activation, device):
    torch.manual_seed(0)
    model = torchext.nn.MLP(sizes, activation=activation, device=device)
    stock = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-3,
                                                         momentum=0.9))
    return trainer, stock


def data(sizes, rows, loss, device):
    x = torch.randn(rows, sizes[0], device=device)
    y = (torch.randn(rows, sizes[-1], device=device) if loss == "mse"
         else torch.randint(0, sizes[-1], (rows,), device=device))
    return x, y


def bench_config(sizes, batch, activation, loss, device, rounds, iters):
    trainer, stock = make_pair(sizes, activation, device)
    assert trainer.backend == device, trainer.backend
    opt = torch.optim.SGD(stock.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    x, y = data(sizes, batch, loss, device)

    def stock_step():
        opt.zero_grad()
        loss_fn(stock(x), y).backward()
        opt.step()

    steps = {"torch": stock_step, "torchext": lambda: trainer.step(x, y)}
    timer = Timer(device)
    for step in steps.values():
        timer(step, max(3, iters // 5))
    per_round = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            per_round[name].append(timer(step, iters))
    t_stock = statistics.median(per_round["torch"])
    t_mine = statistics.median(per_round["torchext"])
    return {"torch_s": t_stock, "torchext_s": t_mine, "ratio": t_stock / t_mine}


def bench_fit_epoch(device, rounds):
    """One epoch of the seed task (6400 samples, batch 128): Trainer.fit vs the stock loop."""
    sizes, batch = [20, 30, 30, 40], 128
    trainer, stock = make_pair(sizes, "relu", device)
    opt = torch.optim.SGD(stock.parameters(), lr=1e-3, momentum=0.9)
    x, y = data(sizes, 6400, "mse", device)

    def stock_epoch():
        order = torch.randperm(len(x)).to(device)
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            opt.zero_grad()
            nn.functional.mse_loss(stock(x[index]), y[index]).backward()
            opt.step()

    def torchext_epoch():
        trainer.fit(x, y, epochs=1, batch_size=batch, progress=False)

    timer = Timer(device)
    timer(stock_epoch, 1)
    timer(torchext_epoch, 1)
    per_round = {"torch": [], "torchext": []}
    for _ in range(rounds):
        per_round["torch"].append(timer(stock_epoch, 1))
        per_round["torchext"].append(timer(torchext_epoch, 1))
    t_stock = statistics.median(per_round["torch"])
    t_mine = statistics.median(per_round["torchext"])
    return {"torch_s": t_stock, "torchext_s": t_mine, "ratio": t_stock / t_mine}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    rounds, iters = (3, 10) if args.quick else (7, 60)
    results = {}
    for name, (sizes, batch, activation, loss) in CONFIGS.items():
        big = sizes[1] * sizes[2] * batch > 1e8
        results[name] = bench_config(sizes, batch, activation, loss, args.device,
                                     rounds if not big else 3, max(3, iters // 10 if big else iters))
    results["seed fit, 1 epoch of 50 steps"] = bench_fit_epoch(args.device, rounds)
    report = {"benchmark": "training step", "device": args.device,
              "machine": machine_description(args.device), "results": results}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    m = report["machine"]
    print(f"Training step on {args.device}: stock eager loop (torch.optim.SGD) vs torchext.Trainer")
    print(f"machine: {m.get('gpu', m['cpu'])}, {m['cores']} cores, torch {m['torch']}")
    print(f"{'config':<36}{'torch':>12}{'torchext':>12}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<36}{r['torch_s'] * 1e6:>10.1f}us{r['torchext_s'] * 1e6:>10.1f}us"
              f"{r['ratio']:>8.2f}")


if __name__ == "__main__":
    main()
