"""``python -m torchext``: show what this torchext build is and check it against stock torch.

Prints the build info, then runs the walk-through's seed network (Linear layers
20→30→30→40 on a batch of 128) through torchext and through stock PyTorch from
the same seed, and reports whether outputs and gradients agree within the
parity tolerance. Exits non-zero if they do not.
"""

import argparse
import sys

import torch

import torchext

SEED_LAYERS = [(20, 30), (30, 30), (30, 40)]
SEED_BATCH = 128
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}


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
    rtol, atol = TOLERANCE[dtype]
    rows = [("output", out_mine, out_stock)]
    for (name, p_mine), p_stock in zip(mine.named_parameters(), stock.parameters()):
        rows.append((f"grad {name}", p_mine.grad, p_stock.grad))
    return [
        (what, max_relative_error(a, e), torch.allclose(a, e, rtol=rtol, atol=atol))
        for what, a, e in rows
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m torchext", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device")
    dtype = getattr(torch, args.dtype)

    info = torchext.build_info()
    print(f"torchext {info['version']}  built against torch {info['torch_version']}"
          f"  CUDA kernels: {'yes (CUDA ' + str(info['cuda_version']) + ')' if info['cuda'] else 'no'}")
    print(f"running on torch {torch.__version__}, device {args.device}, {args.dtype}")
    print()
    print(f"seed network {' -> '.join(str(i) for i, _ in SEED_LAYERS)} -> {SEED_LAYERS[-1][1]}"
          f", batch {SEED_BATCH}: torchext.nn.Linear vs torch.nn.Linear")
    results = check_linear(args.device, dtype)
    width = max(len(what) for what, _, _ in results)
    for what, err, ok in results:
        print(f"  {what:<{width}}  max rel. error {err:.2e}  {'ok' if ok else 'MISMATCH'}")
    all_ok = all(ok for _, _, ok in results)
    print()
    print("parity: " + ("all match within tolerance" if all_ok else "MISMATCH"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
