"""torchext: PyTorch's Linear, SGD and training loop, in C++/CUDA, with exact parity.

Importing torchext loads the thin binding torchext._C and, with it, the C++ core
libtorchext (``lib/`` in this package), which registers the ``torch.ops.torchext``
operators. A binary built against another torch cannot work, so that case fails here,
in words, rather than deep inside the dispatcher.

The package is also a C++ distribution: ``include/`` holds the public headers and
``cmake_prefix_path`` is the folder for CMake's ``find_package(torchext)``.
"""

import os as _os

import torch

try:
    from . import _build_info
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "torchext is not built: install it with `pip install .` (or `pip install -e .`) "
        "from the source tree."
    ) from exc

__version__ = _build_info.version

#: Put on CMAKE_PREFIX_PATH (next to ``torch.utils.cmake_prefix_path``) for
#: ``find_package(torchext)`` to find this installation's libtorchext.
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "share", "cmake")


def _release(version):
    return version.split("+")[0]


def _major_minor(version):
    return tuple(_release(version).split(".")[:2])


def _rebuild_hint():
    return (
        "Rebuild torchext against the installed torch: "
        "`pip install --no-build-isolation --force-reinstall --no-deps .` from the source tree."
    )


if _major_minor(_build_info.torch_version) != _major_minor(torch.__version__):
    raise ImportError(
        f"torchext {__version__} was built against torch {_build_info.torch_version}, but torch "
        f"{torch.__version__} is installed. {_rebuild_hint()}"
    )

try:
    from . import _C
except ImportError as exc:
    raise ImportError(
        f"torchext's compiled core failed to load ({exc}). It was built against torch "
        f"{_build_info.torch_version}; torch {torch.__version__} is installed. {_rebuild_hint()}"
    ) from exc


def build_info():
    """What this torchext binary was built with.

    Returns a dict with ``version`` (torchext), ``torch_version`` (the torch it was
    compiled against), ``cuda`` (whether CUDA kernels are compiled in) and
    ``cuda_version`` (the CUDA version of that torch, or None).
    """
    info = dict(_C.build_info())
    info["cuda_version"] = _build_info.cuda_version
    return info


# After _C is loaded: ops registers fake kernels for ops that must exist by now.
from . import nn, ops, optim  # noqa: E402
from .trainer import CheckpointError, Trainer  # noqa: E402

__all__ = [
    "__version__", "build_info", "cmake_prefix_path", "nn", "ops", "optim", "Trainer",
    "CheckpointError",
]
