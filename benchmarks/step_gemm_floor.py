"""The GEMMs of one training step, timed alone: the floor under any step that uses the same BLAS.

A step of an L-layer MLP runs 3L - 1 matrix products: per layer the forward product and the
weight gradient, and for every layer but the first the input gradient. This script times each
of them alone with ``torch.mm(..., out=...)`` (torch's BLAS: MKL on x86 CPU builds), sums them,
and times ``torchext.Trainer.step`` and the stock loop (fused SGD) on the same network and batch
in the same process, in alternating rounds. What the sum leaves of a step is everything else:
bias, activation and loss passes, the SGD update, the per-call work.

    python benchmarks/step_gemm_floor.py [--network 784-256-256-10] [--batch 256] [--loss ce]
"""

import argparse
import os
import time

import torch

import torchext


def best_time(fn, rounds, calls):
    """Best mean seconds per call over ``rounds`` rounds of ``calls`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def step_gemms(sizes, batch):
    """(name, multiply-adds, callable) for each product of a training step."""
    gemms = []
    for layer, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        x, w = torch.randn(batch, n_in), torch.randn(n_out, n_in)
        dz, out = torch.randn(batch, n_out), torch.empty(batch, n_out)
        dw, dx = torch.empty(n_out, n_in), torch.empty(batch, n_in)
        macs = batch * n_in * n_out
        gemms.append((f"layer {layer} forward x·Wᵀ", macs,
                      lambda x=x, w=w, out=out: torch.mm(x, w.t(), out=out)))
        gemms.append((f"layer {layer} weight grad dZᵀ·x", macs,
                      lambda dz=dz, x=x, dw=dw: torch.mm(dz.t(), x, out=dw)))
        if layer > 0:
            gemms.append((f"layer {layer} input grad dZ·W", macs,
                          lambda dz=dz, w=w, dx=dx: torch.mm(dz, w, out=dx)))
    return gemms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="784-256-256-10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--loss", choices=("mse", "ce"), default="ce")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.network.split("-")]
    torch.manual_seed(0)

    print(f"network {args.network}, batch {args.batch}, {args.loss}, float32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average {[round(v, 2) for v in os.getloadavg()]}")
    floor = 0.0
    for name, macs, fn in step_gemms(sizes, args.batch):
        fn()
        seconds = best_time(fn, args.rounds, 50)
        floor += seconds
        print(f"  {name:28s} {seconds * 1e6:9.1f} µs  {2 * macs / seconds / 1e9:6.1f} GFLOP/s")
    print(f"  {'sum of the GEMMs':28s} {floor * 1e6:9.1f} µs")

    model = torchext.nn.MLP(sizes, activation="relu")
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    stock = torch.nn.Sequential(*layers[:-1])  # the same keys as the MLP's: 0.weight, ...
    stock.load_state_dict(model.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss() if args.loss == "ce" else torch.nn.MSELoss()
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-3,
                                                         momentum=0.9), loss_fn)
    stock_opt = torch.optim.SGD(stock.parameters(), lr=1e-3, momentum=0.9, fused=True)
    x = torch.randn(args.batch, sizes[0])
    y = (torch.randint(0, sizes[-1], (args.batch,)) if args.loss == "ce"
         else torch.randn(args.batch, sizes[-1]))

    def stock_step():
        stock_opt.zero_grad()
        loss_fn(stock(x), y).backward()
        stock_opt.step()

    times = {"torchext.Trainer.step": [], "stock loop (fused SGD)": []}
    for _ in range(args.rounds):  # alternating rounds: drift in load hits both alike
        times["torchext.Trainer.step"].append(best_time(lambda: trainer.step(x, y), 1, 50))
        times["stock loop (fused SGD)"].append(best_time(stock_step, 1, 50))
    for name, values in times.items():
        seconds = min(values)
        rest = (seconds - floor) * 1e6
        print(f"  {name:28s} {seconds * 1e6:9.1f} µs  = GEMM sum + {rest:.1f} µs")


if __name__ == "__main__":
    main()
