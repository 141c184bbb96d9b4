"""torchext's CPU kernels in each of their ISA builds (portable, AVX2, AVX-512) on this machine.

The training core's step and the fused SGD update pick a build at run time: the best the CPU runs,
capped by ``ATEN_CPU_CAPABILITY`` as torch's own kernels are. Here every build the CPU runs is
pinned in turn and compared with stock PyTorch computed in the same test, over layer shapes that
take each GEMM path of the core (the register tiles with their fused epilogues, the vendor BLAS,
tails of every tile and vector width) and every activation and loss; the results of one build
must not depend on the number of threads, and the core runs on torch's own OpenMP runtime.
(tests/test_trainer.py runs its parity cases on every
build too; tests/test_fused_sgd_op.py runs its own under each ATEN_CPU_CAPABILITY.)
"""

import os
import shutil
import subprocess
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
from cpu_isa_support import ALL_ISAS, SUPPORTED_ISAS, pinned

import torchext
from torchext import _C

# (sizes, batch, activation, loss, bias): the seed network; the 10-46-46-10 MLP of the thread
# cliff; odd widths and a batch that is no multiple of any tile; MNIST-sized layers that go to
# BLAS; a layer wider than the tiles take, with GELU (whose epilogue is a pass of its own);
# identity layers at a batch that splits the tiles over threads; no bias; the seed network at a
# batch longer than the tiles' other operands, whose weight gradients still run on the tiles.
# Between them they take both orientations of the tiles' weight gradient (dW, and dWᵀ transposed
# back) on every SIMD build.
SHAPES = [
    ([20, 30, 30, 40], 128, "relu", "mse", True),
    ([10, 46, 46, 10], 128, "tanh", "cross_entropy", True),
    ([33, 17, 65, 3], 37, "sigmoid", "mse", True),
    ([784, 256, 256, 10], 64, "relu", "cross_entropy", True),
    ([50, 1100, 20], 24, "gelu", "mse", True),
    ([8, 64, 64, 64, 4], 1024, "identity", "cross_entropy", True),
    ([12, 40, 9], 30, "relu", "mse", False),
    ([20, 30, 30, 40], 1500, "relu", "mse", True),
]
SHAPE_IDS = shape_ids(SHAPES)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_core_step_matches_stock_on_every_build(isa, dtype, shape):
    with pinned(isa):
        assert _C.cpu_capability() == isa
        assert_matches_stock(shape, dtype)


@pytest.mark.parametrize("isa", [isa for isa in SUPPORTED_ISAS if isa != "DEFAULT"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[5]], ids=[SHAPE_IDS[0], SHAPE_IDS[5]])
def test_core_results_do_not_depend_on_the_thread_count(isa, shape):
    # The tiles and passes split over independent outputs only: 1 and 2 threads give the same bits.
    assert_thread_count_changes_no_bit(shape, lambda: pinned(isa))


def test_builds_agree_with_each_other():
    # Each build is a chain of multiply-adds per output in the same order; they differ only in
    # rounding (the portable build does not fuse the multiply and the add).
    results = {}
    for isa in SUPPORTED_ISAS:
        with pinned(isa):
            model = train_both(SHAPES[2], torch.float64)[0]
        results[isa] = [p.detach() for p in model.parameters()]
    first = results[SUPPORTED_ISAS[0]]
    for isa in SUPPORTED_ISAS[1:]:
        for a, b in zip(first, results[isa]):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_pinning_refuses_unknown_names_and_changes_nothing():
    before = _C.cpu_capability()
    with pytest.raises(ValueError, match="unknown CPU capability 'SSE'"):
        _C._set_cpu_capability("SSE")
    assert _C.cpu_capability() == before


_PROBE = (
    "import torch, torchext; "
    "print(torchext._C.cpu_capability(), torch.backends.cpu.get_cpu_capability())"
)


@pytest.mark.parametrize("env", [None, "default", "avx2", "avx512"])
def test_aten_cpu_capability_caps_every_kernel_build(env):
    # torchext reads ATEN_CPU_CAPABILITY as torch's kernel selection does: the named build, or
    # the CPU's best where the CPU lacks the named one. (torch's get_cpu_capability() reports
    # the named value even then, while its kernels still check the CPU, so the two reports
    # agree only where the CPU has the named build.)
    environ = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if env is not None:
        environ["ATEN_CPU_CAPABILITY"] = env
    out = subprocess.run([sys.executable, "-c", _PROBE], env=environ, capture_output=True,
                         text=True, check=True).stdout.split()
    best = SUPPORTED_ISAS[-1]
    wanted = best if env is None else env.upper()
    expected = wanted if ALL_ISAS.index(wanted) <= ALL_ISAS.index(best) else best
    assert out[0] == expected
    assert out[1] == wanted



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF and /proc")
def test_the_core_runs_on_torchs_own_openmp_runtime():
    # Compiled with OpenMP (else ATen's inlined parallel_for is a serial loop in libtorchext) and
    # sharing the one runtime torch loaded, so torch.set_num_threads sizes the core's threads too.
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch does not thread with OpenMP")
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("needs readelf")
    lib = os.path.join(os.path.dirname(torchext.__file__), "lib", "libtorchext.so")
    needed = subprocess.run([readelf, "-d", lib], capture_output=True, text=True,
                            check=True).stdout
    assert "libgomp" in needed
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(runtimes) == 1, runtimes
