"""The ISA builds of torchext's CPU kernels that this machine runs, and pinning one for a test.

``torchext._C._set_cpu_capability(name)`` pins a build (``DEFAULT``: portable, ``AVX2``,
``AVX512``) for the whole process, refusing one the CPU cannot run; ``None`` restores the default
(the best the CPU runs, capped by ``ATEN_CPU_CAPABILITY``). ``_set_large_gemm(name)`` likewise pins
the kernel of the training core's large products (``BLAS`` or ``TILES``, the blocked tiles).
"""

import contextlib

from torchext import _C

ALL_ISAS = ("DEFAULT", "AVX2", "AVX512")


def _runs(name):
    try:
        _C._set_cpu_capability(name)
    except RuntimeError:
        return False
    finally:
        _C._set_cpu_capability(None)
    return True


SUPPORTED_ISAS = tuple(name for name in ALL_ISAS if _runs(name))


@contextlib.contextmanager
def pinned(name):
    """The CPU kernels run their ``name`` build inside the block."""
    _C._set_cpu_capability(name)
    try:
        yield
    finally:
        _C._set_cpu_capability(None)


@contextlib.contextmanager
def pinned_large_gemm(name):
    """The training core's large products run on ``name`` (BLAS or TILES) inside the block."""
    _C._set_large_gemm(name)
    try:
        yield
    finally:
        _C._set_large_gemm(None)
