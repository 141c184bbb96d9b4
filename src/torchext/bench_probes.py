"""The roofline column of ``python -m torchext bench``: peaks measured on the machine itself, and
the work each cell does.

Peaks. A large-GEMM probe (a square ``torch.mm`` of ``GEMM_PROBE_N``, best of a few calls, with
torch's threads): the arithmetic rate the vendor BLAS sustains. A copy probe (``Tensor.copy_``
between two buffers far larger than the caches, best of a few calls, bytes read + written per
second): the memory bandwidth a streaming kernel can reach.

Work. A cell's floating-point operations are those of its GEMMs (2 per multiply-add; the
elementwise passes are left out): forward, weight gradients, and the input gradients that the
step needs (a Linear cell's input requires its gradient; a network's input does not). An SGD cell
moves bytes instead: parameter, gradient and momentum buffer read, parameter and buffer written.
The column gives torchext's achieved rate and its fraction of the matching peak. The copy probe
is the rate of torch's own streaming copy, not the memory's limit: ``copy_`` writes lines it has
not read (each is first read for ownership, traffic the count leaves out), while the SGD update
reads every line it writes, so the update can exceed 100 % of it even out of cache (about 190 %
over 25 M parameters on a 2-core Xeon, where a plain AVX-512 loop with the update's accesses
moved its bytes as fast), and further where its tensors stay in the caches (a small network
stepped again and again).
"""

import itertools
import time

import torch

GEMM_PROBE_N = 2048
COPY_PROBE_BYTES = 256 * 2**20
PROBE_CALLS = 5


def _best_seconds(fn, device, calls=PROBE_CALLS):
    fn()  # warm-up: first-touch page faults, BLAS buffers
    best = float("inf")
    for _ in range(calls):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        begin = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - begin)
    return best


def measure_peaks(device, dtype):
    """{"gemm_flop_s", "copy_byte_s", "gemm_n", "copy_bytes"} measured now on ``device``."""
    n = GEMM_PROBE_N
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    gemm_s = _best_seconds(lambda: torch.mm(a, b, out=out), device)
    elements = COPY_PROBE_BYTES * 8 // torch.finfo(dtype).bits
    src = torch.ones(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), device)
    return {"gemm_flop_s": 2 * n**3 / gemm_s, "copy_byte_s": 2 * src.nbytes / copy_s,
            "gemm_n": n, "copy_bytes": src.nbytes}


def _gemm_flops(sizes, batch, input_gradient):
    layers = list(itertools.pairwise(sizes))
    macs = sum(i * o for i, o in layers)
    # forward + weight gradient for every layer; input gradients below the top layer's input
    grads_in = macs if input_gradient else macs - layers[0][0] * layers[0][1]
    return 2 * batch * (2 * macs + grads_in)


def cell_work(kind, sizes, batch, dtype, steps_per_call=1):
    """(amount, "flop" or "byte") per call of a cell, or None for kinds without a roofline."""
    if kind == "linear":
        return _gemm_flops(sizes, batch, input_gradient=True), "flop"
    if kind in ("step", "threads", "fit"):
        return steps_per_call * _gemm_flops(sizes, batch, input_gradient=False), "flop"
    if kind == "sgd":
        elements = sum(o * i + o for i, o in itertools.pairwise(sizes))
        return 5 * elements * torch.finfo(dtype).bits // 8, "byte"
    return None


def roofline(work, seconds, peaks):
    """{"achieved", "unit", "of_peak"} for ``work`` (cell_work's answer) done in ``seconds``."""
    amount, what = work
    rate = amount / seconds
    peak = peaks["gemm_flop_s"] if what == "flop" else peaks["copy_byte_s"]
    return {"achieved": rate / 1e9, "unit": "GFLOP/s" if what == "flop" else "GB/s",
            "of_peak": rate / peak}
