"""Linear forward+backward: torchext.nn.Linear against torch.nn.Linear, same process.

For each size, both modules get identical parameters and inputs; one timed
iteration is ``y = m(x); y.backward(grad)`` (grads reset to None between
iterations, as an optimizer loop would). The two contenders are timed in
alternating rounds so that drift in machine load hits both alike; each round
takes the median iteration, and the reported time is the median round.
ratio = stock time / torchext time (> 1: torchext is faster).

    python benchmarks/bench_linear.py [--device cpu|cuda] [--quick] [--json]
"""

import argparse
import json
import statistics
import sys
import time

import torch

import torchext
from torchext.bench import machine as machine_description

# name -> (batch, in_features, out_features)
SIZES = {
    "cpu": {
        "seed 128x20->30": (128, 20, 30),
        "mid 512x256->256": (512, 256, 256),
        "large 2048x1024->1024": (2048, 1024, 1024),
    },
    "cuda": {
        "seed 128x20->30": (128, 20, 30),
        "mid 4096x1024->1024": (4096, 1024, 1024),
        "large 8192x4096->4096": (8192, 4096, 4096),
    },
}


class Timer:
    """Median seconds per call of fn, with CUDA events on the GPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn, iters):
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            samples = []
            for _ in range(iters):
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
            return statistics.median(samples)
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


def make_step(module, x, grad):
    def step():
        for p in module.parameters():
            p.grad = None
        module(x).backward(grad)

    return step


def bench_size(batch, in_features, out_features, device, dtype, rounds, iters):
    torch.manual_seed(0)
    stock = torch.nn.Linear(in_features, out_features, device=device, dtype=dtype)
    mine = torchext.nn.Linear(in_features, out_features, device=device, dtype=dtype)
    mine.load_state_dict(stock.state_dict())
    x = torch.randn(batch, in_features, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, out_features, device=device, dtype=dtype)
    steps = {"torch": make_step(stock, x, grad), "torchext": make_step(mine, x, grad)}
    timer = Timer(device)
    for step in steps.values():  # warm-up: allocator, BLAS handles, heuristics
        timer(step, max(3, iters // 5))
    per_round = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            per_round[name].append(timer(step, iters))
    t_stock = statistics.median(per_round["torch"])
    t_mine = statistics.median(per_round["torchext"])
    spread = {name: (max(v) - min(v)) / statistics.median(v) for name, v in per_round.items()}
    return {"torch_s": t_stock, "torchext_s": t_mine, "ratio": t_stock / t_mine,
            "spread": spread}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16",
                                                               "float16"])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    dtype = getattr(torch, args.dtype)
    rounds, iters = (3, 10) if args.quick else (9, 50)

    results = {}
    for name, (batch, i, o) in SIZES[args.device].items():
        scale = 1 if batch * i * o < 1e8 or args.device == "cuda" else 0.2
        results[name] = bench_size(batch, i, o, args.device, dtype, rounds,
                                   max(3, int(iters * scale)))
    report = {"benchmark": "linear forward+backward", "device": args.device,
              "dtype": args.dtype, "machine": machine_description(args.device),
              "results": results}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    m = report["machine"]
    print(f"Linear forward+backward, {args.dtype} on {args.device}: torch.nn.Linear vs "
          f"torchext.nn.Linear")
    print(f"machine: {m.get('gpu', m['cpu'])}, {m['cores']} cores, torch {m['torch']}")
    print(f"{'size':<24}{'torch':>12}{'torchext':>12}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['torch_s'] * 1e6:>10.1f}us{r['torchext_s'] * 1e6:>10.1f}us"
              f"{r['ratio']:>8.2f}")


if __name__ == "__main__":
    main()
