"""The training core's blocked tiles: its large products on torchext's own kernels, against stock.

Products too large for the unblocked tiles go to the vendor BLAS or, where that is slower (by
default on AMD CPUs running the AVX-512 build), to the same tiles run over packed panels of B and
blocks of k and of rows (csrc/train/tile_drivers.cpp). Here the blocked tiles are pinned on every
SIMD build the CPU runs, whatever its vendor, over shapes that take each of their cases: several
blocks of k in each kind of product (float blocks are 512 deep, double 256), panels cut short
(widths no multiple of 64), row blocks cut short, threads splitting by panels and by rows, each
epilogue (bias and ReLU in registers, an activation's derivative in registers, a pass after the
product, GELU's input gradient through BLAS), and no bias. Results are compared with stock
PyTorch, must not depend on the thread count, and pinning refuses unknown names.
"""

import sys

import pytest
import torch
from core_parity_support import (
    TOL,
    assert_matches_stock,
    assert_thread_count_changes_no_bit,
    shape_ids,
    train_both,
)
from cpu_isa_support import SUPPORTED_ISAS, pinned, pinned_large_gemm

from torchext import _C

SIMD_ISAS = [isa for isa in SUPPORTED_ISAS if isa != "DEFAULT"]
pytestmark = pytest.mark.skipif(not SIMD_ISAS, reason="the tiles need AVX2 or AVX-512")

# (sizes, batch, activation, loss, bias), as in test_cpu_isa.
SHAPES = [
    # forward: 600-deep sums, 130 columns (3 panels: threads split rows); dW: 10 panels.
    ([600, 130, 70, 5], 401, "relu", "mse", True),
    # forward through a pass after the product (tanh); dW 1100 wide, beyond the unblocked tiles.
    ([1100, 300, 20], 64, "tanh", "cross_entropy", True),
    # 1030 wide: every product blocked; dW 700 deep over one short panel; no bias.
    ([40, 1030, 40], 700, "sigmoid", "mse", False),
    # 24 rows, the fewest the blocked forward takes; GELU's input gradient through BLAS.
    ([50, 1100, 20], 24, "gelu", "mse", True),
    ([300, 260, 10], 100, "identity", "cross_entropy", True),
    # an input gradient 700 deep (the 50-700 layer's).
    ([40, 50, 700, 5], 200, "relu", "mse", True),
]
SHAPE_IDS = shape_ids(SHAPES)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_blocked_tiles_match_stock(isa, dtype, shape):
    with pinned(isa), pinned_large_gemm("TILES"):
        assert _C.large_gemm() == "TILES"
        assert_matches_stock(shape, dtype)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=SHAPE_IDS[:3])
def test_blocked_tiles_do_not_depend_on_the_thread_count(isa, shape):
    # Threads take whole panels or whole rows, each element one chain over k: the same bits.
    assert_thread_count_changes_no_bit(shape, lambda: pinned(isa),
                                       lambda: pinned_large_gemm("TILES"))


def test_blocked_and_blas_agree():
    # The same products through either kernel: equal up to rounding.
    results = {}
    for kernel in ("BLAS", "TILES"):
        with pinned_large_gemm(kernel):
            results[kernel] = [p.detach() for p in train_both(SHAPES[0], torch.float64)[0]
                               .parameters()]
    for a, b in zip(results["BLAS"], results["TILES"]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_the_portable_build_always_uses_blas():
    with pinned("DEFAULT"), pinned_large_gemm("TILES"):
        assert _C.large_gemm() == "BLAS"


def test_pinning_refuses_unknown_names_and_changes_nothing():
    before = _C.large_gemm()
    with pytest.raises(ValueError, match="unknown large-GEMM kernel 'MKL'"):
        _C._set_large_gemm("MKL")
    assert _C.large_gemm() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_the_default_is_the_blocked_tiles_only_on_amd_with_avx512():
    with open("/proc/cpuinfo") as info:
        amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in info)
    for isa in SUPPORTED_ISAS:
        with pinned(isa):
            expected = "TILES" if amd and isa == "AVX512" else "BLAS"
            assert _C.large_gemm() == expected, isa
