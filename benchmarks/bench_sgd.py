"""Step time of torchext.optim.SGD against torch.optim.SGD (foreach and fused), same process.

All three run SGD with momentum 0.9 on identical parameters and fixed gradients:
  seed    the seed network's 6 tensors (Linear 20->30, 30->30, 30->40 weights and biases)
  10M     about 10M float32 parameters in 50 tensors
  200M    200M float32 parameters in 50 tensors (CUDA only)
Timing: warm-up steps, then many repetitions of a block of steps, interleaved between the
optimizers; the median per-step time is reported (CUDA events on the GPU). A step is
bandwidth-bound, so large configs also report the achieved bandwidth, counting 5 x 4 bytes per
parameter (read p, g, buf; write p, buf), next to a device copy (`y.copy_(x)` into a preallocated
`y`, 2 x 4 bytes per element; a fresh `y` would time the page faults of its allocation on the CPU)
of the same size measured in the same run.
Ratios are stock_time / torchext_time: above 1 means torchext is faster. The 1-minute load
average before and after the run is printed with the machine: on a shared machine, compare only
runs made at a similar load, and repeat them.

    python benchmarks/bench_sgd.py [--device cpu|cuda] [--quick] [--json]
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

import torchext

SEED_SHAPES = [(30, 20), (30,), (30, 30), (30,), (40, 30), (40,)]


def configs(device, quick):
    out = [("seed", SEED_SHAPES)]
    if not quick or device == "cuda":
        out.append(("10M", [(200_000,)] * 50))
    if device == "cuda" and not quick:
        out.append(("200M", [(4_000_000,)] * 50))
    return out


def machine(device):
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchext": torchext.__version__,
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def make_optimizers(shapes, device):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]

    def params():
        ps = [b.to(device).requires_grad_() for b in base]
        for p, g in zip(ps, grads):
            p.grad = g.to(device)
        return ps

    kw = {"lr": 1e-4, "momentum": 0.9}
    return {
        "torchext": torchext.optim.SGD(params(), **kw),
        "foreach": torch.optim.SGD(params(), foreach=True, **kw),
        "fused": torch.optim.SGD(params(), fused=True, **kw),
    }


class Timer:
    """Seconds for `fn` run `inner` times: perf_counter on the CPU, CUDA events on the GPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn, inner):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        for _ in range(inner):
            fn()
        return time.perf_counter() - begin


def median_step(fns, timer, numel, quick):
    """Median seconds per call of each fn, measured round-robin."""
    inner = max(1, min(200, int(2e7 // max(numel, 1))))  # about 20M elements per block
    repeats = 7 if quick else 31
    for fn in fns.values():  # warm-up: first steps, allocator, caches
        timer(fn, max(3, inner))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timer(fn, inner) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def run(device, quick):
    timer = Timer(device)
    rows = []
    for name, shapes in configs(device, quick):
        numel = sum(torch.Size(s).numel() for s in shapes)
        optimizers = make_optimizers(shapes, device)
        fns = {k: opt.step for k, opt in optimizers.items()}
        big = numel >= 1_000_000
        if big:
            x = torch.randn(numel, device=device)
            copy_out = torch.empty_like(x)
            fns["copy"] = lambda x=x, y=copy_out: y.copy_(x)
        times = median_step(fns, timer, numel, quick)
        row = {
            "config": name,
            "params": numel,
            "tensors": len(shapes),
            **{f"{k}_us": v * 1e6 for k, v in times.items()},
            "foreach/torchext": times["foreach"] / times["torchext"],
            "fused/torchext": times["fused"] / times["torchext"],
        }
        if big:
            row["torchext_GBps"] = 5 * 4 * numel / times["torchext"] / 1e9
            row["copy_GBps"] = 2 * 4 * numel / times["copy"] / 1e9
        rows.append(row)
        del optimizers, fns
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(info, rows):
    print("  ".join(f"{k}: {v}" for k, v in info.items()))
    head = [
        "config",
        "params",
        "tensors",
        "torchext us",
        "foreach us",
        "fused us",
        "foreach/torchext",
        "fused/torchext",
        "torchext GB/s",
        "copy GB/s",
    ]
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for r in rows:
        gbps = (
            (f"{r['torchext_GBps']:.1f}", f"{r['copy_GBps']:.1f}")
            if "copy_GBps" in r
            else ("-", "-")
        )
        print(
            " | ".join(
                [
                    r["config"],
                    f"{r['params']:,}",
                    str(r["tensors"]),
                    f"{r['torchext_us']:.1f}",
                    f"{r['foreach_us']:.1f}",
                    f"{r['fused_us']:.1f}",
                    f"{r['foreach/torchext']:.2f}",
                    f"{r['fused/torchext']:.2f}",
                    *gbps,
                ]
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, small configs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    info = machine(args.device)
    info["load_before"] = f"{os.getloadavg()[0]:.2f}"
    rows = run(args.device, args.quick)
    info["load_after"] = f"{os.getloadavg()[0]:.2f}"
    if args.json:
        print(json.dumps({"machine": info, "results": rows}, indent=2))
    else:
        print_table(info, rows)


if __name__ == "__main__":
    main()
