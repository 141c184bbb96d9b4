"""``python -m torchext check``: the build info, and torchext.nn.Linear against torch.nn.Linear.

Runs forward and backward of the seed network (the walk-through's 20→30→30→40, batch 128) with
``torchext.nn.Linear`` and with ``torch.nn.Linear`` from the same seed and prints the largest
relative difference of the output and of every gradient; exit status 1 on a mismatch.
"""

import torch

import torchext

SEED_LAYERS = [(20, 30), (30, 30), (30, 40)]
SEED_BATCH = 128
CHECK_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}  # (rtol, atol)


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
